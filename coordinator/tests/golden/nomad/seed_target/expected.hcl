# Rendered by dockfra from the compose file: change that, not this.
job "myapp" {
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

  group "redis" {
    count = 3

    network {
      mode = "bridge"

      port "p6379" {
        to = 6379
      }
    }

    volume "redis-data" {
      type   = "host"
      source = "redis-data"
    }

    service {
      name     = "redis"
      port     = "p6379"
      provider = "nomad"
      task     = "redis"
    }

    task "redis" {
      driver = "docker"

      config {
        image = "redis:7-alpine"
        ports = ["p6379"]
      }

      volume_mount {
        volume      = "redis-data"
        destination = "/data"
        read_only   = false
      }
    }
  }

  group "web" {
    count = 3

    network {
      mode = "bridge"

      port "p8000" {
        static = 80
        to     = 8000
      }
    }

    service {
      name     = "web"
      port     = "p8000"
      provider = "nomad"
      task     = "web"
    }

    task "wait-for-redis" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        image   = "busybox:1.36"
        command = "/bin/sh"
        args = [
          "-c",
          "until [ -s /local/redis.addr ] && { nc -z -w 2 $(head -n 1 /local/redis.addr) || nc -w 2 $(head -n 1 /local/redis.addr) -e true; } 2>/dev/null; do sleep 2; done",
        ]
      }

      template {
        data        = "{{ range nomadService \"redis\" }}{{ .Address }} {{ .Port }}\n{{ end }}"
        destination = "local/redis.addr"
        change_mode = "noop"
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    task "web" {
      driver = "docker"

      config {
        image = "example/myapp-web:1.4.2"
        ports = ["p8000"]
      }

      env {
        APP_ENV = "production"
      }
    }
  }
}
