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

  group "data" {
    count = 1

    network {
      mode = "bridge"
    }

    task "data" {
      driver = "docker"

      config {
        image = "busybox:1.36"
      }
    }
  }

  group "db" {
    count = 1

    network {
      mode = "bridge"

      port "p5432" {
        static = 5432
        to     = 5432
      }
    }

    service {
      name     = "db"
      port     = "p5432"
      provider = "nomad"
      task     = "db"
    }

    task "db" {
      driver = "docker"

      config {
        image = "postgres:16"
        ports = ["p5432"]
      }
    }
  }

  group "sidecar" {
    count = 1

    network {
      mode = "bridge"
    }

    task "sidecar" {
      driver = "docker"

      config {
        image = "example/sidecar:1"
      }
    }
  }

  group "web" {
    count = 1

    network {
      mode = "bridge"
    }

    task "web" {
      driver = "docker"

      config {
        image = "example/web:1"
      }
    }
  }
}
