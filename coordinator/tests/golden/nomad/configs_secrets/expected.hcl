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

  group "proxy" {
    count = 1

    network {
      mode = "bridge"

      port "p80" {
        static = 80
        to     = 80
      }
    }

    service {
      name     = "proxy"
      port     = "p80"
      provider = "nomad"
      task     = "proxy"
    }

    task "proxy" {
      driver = "docker"

      config {
        image = "nginx:1.27"
        ports = ["p80"]
        volumes = [
          "local/configs/nginx_conf:/etc/nginx/conf.d/default.conf:ro",
          "local/configs/motd:/motd:ro",
          "secrets/db_password:/run/secrets/db_password:ro",
          "secrets/api_key:/run/secrets/api.key:ro",
        ]
      }

      template {
        data        = "server {\n  listen 80;\n  location / {\n    return 200 \"ok $${host}\\n\";\n  }\n}\n"
        destination = "local/configs/nginx_conf"
        change_mode = "restart"
      }

      template {
        data        = "Welcome to {{\"{{\"}} the proxy }}\n"
        destination = "local/configs/motd"
        change_mode = "restart"
      }

      template {
        data        = "s3cr3t-pa55\n"
        destination = "secrets/db_password"
        change_mode = "restart"
      }

      template {
        data        = "key-123\n"
        destination = "secrets/api_key"
        change_mode = "restart"
        perms       = "0440"
        uid         = 101
        gid         = 101
      }
    }
  }
}
