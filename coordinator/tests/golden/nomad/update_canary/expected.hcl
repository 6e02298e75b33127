# Rendered by dockfra from the compose file: change that, not this.
job "shop-frontend" {
  region      = "europe"
  namespace   = "shop"
  datacenters = ["eu-west-1a", "eu-west-1b"]
  type        = "service"

  meta {
    dockfra_app     = "golden"
    dockfra_release = "7"
  }

  update {
    max_parallel      = 2
    canary            = 1
    auto_revert       = false
    auto_promote      = true
    min_healthy_time  = "30s"
    healthy_deadline  = "5m"
    progress_deadline = "1h"
  }

  group "web" {
    count = 1

    network {
      mode = "bridge"

      port "p80" {
        to = 80
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
        image = "example/web:2"
        ports = ["p80"]
      }
    }
  }
}
