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
    count = 1

    network {
      mode = "bridge"

      port "p8000" {
        static = 8000
        to     = 8000
      }

      port "p9090" {
        to = 9090
      }
    }

    service {
      name     = "api"
      port     = "p8000"
      provider = "nomad"
      task     = "api"

      check {
        name     = "healthcheck"
        type     = "http"
        path     = "/healthz?full=1"
        port     = "p9090"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "api" {
      driver = "docker"

      config {
        image = "example/api:1"
        ports = ["p8000", "p9090"]
      }
    }
  }

  group "db" {
    count = 1

    network {
      mode = "bridge"

      port "p5432" {
        to = 5432
      }
    }

    service {
      name     = "db"
      port     = "p5432"
      provider = "nomad"
      task     = "db"

      check {
        name     = "healthcheck"
        type     = "tcp"
        interval = "1s"
        timeout  = "30s"
      }
    }

    task "db" {
      driver = "docker"

      config {
        image = "postgres:16"
        ports = ["p5432"]
      }
    }
  }

  group "off" {
    count = 1

    network {
      mode = "bridge"

      port "p80" {
        static = 81
        to     = 80
      }
    }

    service {
      name     = "off"
      port     = "p80"
      provider = "nomad"
      task     = "off"
    }

    task "off" {
      driver = "docker"

      config {
        image = "example/off:1"
        ports = ["p80"]
      }
    }
  }

  group "worker" {
    count = 1

    network {
      mode = "bridge"
    }

    task "worker" {
      driver = "docker"

      config {
        image = "example/worker:1"
      }
    }
  }
}
