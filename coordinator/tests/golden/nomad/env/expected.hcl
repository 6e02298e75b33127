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
    }

    task "app" {
      driver = "docker"

      config {
        image = "example/app:1"
      }

      env = {
        LOG_LEVEL                = "debug"
        MODE                     = "production"
        TEMPLATE                 = "{{ not a template }}, %%{ and $${LITERAL} \"quoted\" \\ back"
        "spring.profiles.active" = "prod"
      }

      template {
        data        = "BRACES=\"{{\"{{\"}} keep }}\"\nDB_URL=\"postgres://db.internal:5432/app\"\nGREETING=\"hello \\\"world\\\"\"\nMULTI=\"line one\\nline two\"\n"
        destination = "secrets/env_file.env"
        env         = true
        change_mode = "restart"
      }
    }
  }
}
