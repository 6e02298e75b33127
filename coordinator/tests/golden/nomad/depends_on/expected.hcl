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

  group "cache" {
    count = 1

    network {
      mode = "bridge"

      port "p6379" {
        to = 6379
      }
    }

    service {
      name     = "cache"
      port     = "p6379"
      provider = "nomad"
      task     = "cache"
    }

    task "cache" {
      driver = "docker"

      config {
        image = "redis:7"
        ports = ["p6379"]
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
        interval = "30s"
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

  group "migrate" {
    count = 1

    network {
      mode = "bridge"
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
          "until [ -s /local/db.addr ] && { nc -z -w 2 $(head -n 1 /local/db.addr) || nc -w 2 $(head -n 1 /local/db.addr) -e true; } 2>/dev/null; do sleep 2; done",
        ]
      }

      template {
        data        = "{{ range nomadService \"db\" }}{{ .Address }} {{ .Port }}\n{{ end }}"
        destination = "local/db.addr"
        change_mode = "noop"
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    task "migrate" {
      driver = "docker"

      config {
        image = "example/migrate:1"
      }
    }
  }

  group "queue" {
    count = 1

    network {
      mode = "bridge"
    }

    task "queue" {
      driver = "docker"

      config {
        image = "example/queue:1"
      }
    }
  }

  group "web" {
    count = 1

    network {
      mode = "bridge"

      port "p8080" {
        static = 8080
        to     = 8080
      }
    }

    service {
      name     = "web"
      port     = "p8080"
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
          "until [ -s /local/db.addr ] && { nc -z -w 2 $(head -n 1 /local/db.addr) || nc -w 2 $(head -n 1 /local/db.addr) -e true; } 2>/dev/null; do sleep 2; done",
        ]
      }

      template {
        data        = "{{ range nomadService \"db\" }}{{ .Address }} {{ .Port }}\n{{ end }}"
        destination = "local/db.addr"
        change_mode = "noop"
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    task "wait-for-cache" {
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
          "until [ -s /local/cache.addr ] && { nc -z -w 2 $(head -n 1 /local/cache.addr) || nc -w 2 $(head -n 1 /local/cache.addr) -e true; } 2>/dev/null; do sleep 2; done",
        ]
      }

      template {
        data        = "{{ range nomadService \"cache\" }}{{ .Address }} {{ .Port }}\n{{ end }}"
        destination = "local/cache.addr"
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
        image = "example/web:1"
        ports = ["p8080"]
      }
    }
  }
}
