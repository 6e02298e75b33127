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

  group "golden" {
    count = 1

    network {
      mode     = "bridge"
      hostname = "web.local"

      port "db_p5432" {
        to = 5432
      }

      port "web_p8080" {
        static = 8080
        to     = 8080
      }
    }

    volume "pgdata" {
      type   = "host"
      source = "pgdata"
    }

    volume "uploads" {
      type   = "host"
      source = "uploads"
    }

    service {
      name     = "db"
      port     = "db_p5432"
      provider = "nomad"
      task     = "db"
    }

    service {
      name     = "web"
      port     = "web_p8080"
      provider = "nomad"
      task     = "web"
    }

    task "wait-for-db" {
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
          "until { nc -z -w 2 127.0.0.1 5432 || nc -w 2 127.0.0.1 5432 -e true; } 2>/dev/null; do sleep 2; done",
        ]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    task "db" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        image       = "postgres:16"
        ports       = ["db_p5432"]
        extra_hosts = ["metrics:127.0.0.1", "migrate:127.0.0.1", "web:127.0.0.1"]
      }

      volume_mount {
        volume      = "pgdata"
        destination = "/var/lib/postgresql/data"
        read_only   = false
      }

      restart {
        mode = "delay"
      }
    }

    task "metrics" {
      driver = "docker"

      config {
        image       = "example/metrics:1"
        extra_hosts = ["db:127.0.0.1", "migrate:127.0.0.1", "web:127.0.0.1"]
      }
    }

    task "migrate" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        image       = "example/migrate:1"
        extra_hosts = ["db:127.0.0.1", "metrics:127.0.0.1", "web:127.0.0.1"]
      }

      restart {
        attempts = 0
        mode     = "fail"
      }
    }

    task "web" {
      driver = "docker"

      config {
        image       = "example/web:1"
        ports       = ["web_p8080"]
        extra_hosts = ["gateway:10.0.0.1", "db:127.0.0.1", "metrics:127.0.0.1", "migrate:127.0.0.1"]
      }

      volume_mount {
        volume      = "uploads"
        destination = "/srv/uploads"
        read_only   = false
      }
    }
  }
}
