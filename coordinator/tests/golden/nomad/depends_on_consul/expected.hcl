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
        to = 8000
      }
    }

    service {
      name     = "api"
      port     = "p8000"
      provider = "consul"
      task     = "api"

      check {
        name                     = "healthcheck"
        type                     = "script"
        task                     = "api"
        command                  = "/bin/sh"
        args                     = ["-c", "wget -q -O- http://localhost:8000/health | grep -q ok"]
        interval                 = "15s"
        timeout                  = "3s"
        failures_before_critical = 4
      }
    }

    task "api" {
      driver = "docker"

      config {
        image = "example/api:1"
        ports = ["p8000"]
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
      provider = "consul"
      task     = "web"
    }

    task "wait-for-api" {
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
          "until [ -s /local/api.addr ] && { nc -z -w 2 $(head -n 1 /local/api.addr) || nc -w 2 $(head -n 1 /local/api.addr) -e true; } 2>/dev/null; do sleep 2; done",
        ]
      }

      template {
        data        = "{{ range service \"api\" }}{{ .Address }} {{ .Port }}\n{{ end }}"
        destination = "local/api.addr"
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
