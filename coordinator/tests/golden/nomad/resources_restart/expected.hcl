# Rendered by dockfra from the compose file: change that, not this.
job "golden" {
  datacenters = ["dc1"]
  type        = "service"

  meta {
    dockfra_app     = "golden"
    dockfra_release = "7"
  }

  update {
    max_parallel      = 1
    canary            = 0
    auto_revert       = true
    auto_promote      = false
    min_healthy_time  = "10s"
    healthy_deadline  = "5m"
    progress_deadline = "10m"
  }

  group "api" {
    count = 2

    network {
      mode = "bridge"
    }

    restart {
      mode = "delay"
    }

    task "api" {
      driver = "docker"

      config {
        image = "example/api:1"
      }

      resources {
        cpu        = 500
        memory     = 256
        memory_max = 512
      }
    }
  }

  group "flaky" {
    count = 1

    network {
      mode = "bridge"
    }

    restart {
      attempts = 3
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "flaky" {
      driver = "docker"

      config {
        image = "example/flaky:1"
      }

      resources {
        cpu    = 250
        memory = 10
      }
    }
  }

  group "oneshot" {
    count = 1

    network {
      mode = "bridge"
    }

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "oneshot" {
      driver = "docker"

      config {
        image = "example/oneshot:1"
      }

      resources {
        cpu    = 1250
        memory = 1024
      }
    }
  }

  group "plain" {
    count = 1

    network {
      mode = "bridge"
    }

    restart {
      mode = "delay"
    }

    task "plain" {
      driver       = "docker"
      kill_timeout = "90s"
      kill_signal  = "SIGINT"

      config {
        image = "example/plain:1"
      }
    }
  }

  group "swarmish" {
    count = 1

    network {
      mode = "bridge"
    }

    restart {
      attempts = 5
      interval = "2m"
      delay    = "5s"
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "swarmish" {
      driver = "docker"

      config {
        image = "example/swarmish:1"
      }
    }
  }
}
