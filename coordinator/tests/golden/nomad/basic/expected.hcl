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

  group "web" {
    count = 1

    network {
      mode = "bridge"

      port "p80" {
        static = 8080
        to     = 80
      }

      port "https" {
        static = 8443
        to     = 443
      }

      port "p9000" {
        to = 9000
      }
    }

    service {
      name     = "web"
      port     = "p80"
      provider = "nomad"
      task     = "web"
    }

    task "web" {
      driver = "docker"

      config {
        image = "nginx:1.27"
        ports = ["p80", "https", "p9000"]
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
        image      = "example/worker:2.1"
        entrypoint = ["/usr/bin/tini", "--"]
        command    = "worker"
        args       = ["--queue", "jobs high", "--concurrency", "4"]
      }
    }
  }
}
