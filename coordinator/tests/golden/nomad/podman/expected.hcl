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

  group "app" {
    count = 1

    network {
      mode = "bridge"

      port "p80" {
        static = 8080
        to     = 80
      }
    }

    service {
      name     = "app"
      port     = "p80"
      provider = "nomad"
      task     = "app"
    }

    task "app" {
      driver = "podman"

      config {
        image       = "docker.io/example/app:1"
        ports       = ["p80"]
        volumes     = ["local/files/app.ini:/etc/app.ini:ro"]
        tmpfs       = ["/tmp"]
        working_dir = "/srv"
        shm_size    = "64m"
        devices     = ["/dev/fuse:/dev/fuse"]
      }

      template {
        data        = "[app]\nname = demo\n"
        destination = "local/files/app.ini"
        change_mode = "restart"
      }
    }
  }
}
