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

  group "backup" {
    count = 1

    network {
      mode = "bridge"
    }

    volume "archive" {
      type   = "host"
      source = "backup-archive"
    }

    volume "db-data" {
      type   = "host"
      source = "db-data"
    }

    task "backup" {
      driver = "docker"

      config {
        image   = "example/backup:1"
        volumes = ["/srv/backups:/export", "local/files/backup.conf:/etc/backup.conf"]
      }

      template {
        data        = "retention = 7\n"
        destination = "local/files/backup.conf"
        change_mode = "restart"
      }

      volume_mount {
        volume      = "db-data"
        destination = "/data"
        read_only   = true
      }

      volume_mount {
        volume      = "archive"
        destination = "/archive"
        read_only   = false
      }
    }
  }

  group "db" {
    count = 1

    network {
      mode = "bridge"
    }

    volume "db-data" {
      type   = "host"
      source = "db-data"
    }

    task "db" {
      driver = "docker"

      config {
        image   = "postgres:16"
        volumes = ["local/files/init.sql:/docker-entrypoint-initdb.d/init.sql:ro"]

        mount {
          type     = "tmpfs"
          target   = "/run/postgresql"
          readonly = false

          tmpfs_options {
            size = 67108864
          }
        }

        mount {
          type     = "tmpfs"
          target   = "/tmp"
          readonly = false

          tmpfs_options {
            size = 16777216
          }
        }
      }

      template {
        data        = "CREATE TABLE t (id int);\n"
        destination = "local/files/init.sql"
        change_mode = "restart"
      }

      volume_mount {
        volume      = "db-data"
        destination = "/var/lib/postgresql/data"
        read_only   = false
      }
    }
  }
}
