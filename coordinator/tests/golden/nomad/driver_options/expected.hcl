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

  group "box" {
    count = 1

    network {
      mode     = "bridge"
      hostname = "box"

      dns {
        servers  = ["10.0.0.53"]
        searches = ["corp.example.com"]
      }

      port "p22" {
        static = 2222
        to     = 22
      }

      port "p53" {
        static = 53
        to     = 53
      }
    }

    service {
      name     = "box"
      port     = "p22"
      provider = "nomad"
      task     = "box"
      tags     = ["traefik.http.routers.box.rule=Host(`box.example.com`)"]
    }

    task "box" {
      driver = "docker"
      user   = "1000:1000"

      config {
        image           = "example/box:1"
        ports           = ["p22", "p53"]
        extra_hosts     = ["db.internal:10.0.0.5"]
        work_dir        = "/work"
        init            = true
        readonly_rootfs = true
        tty             = true
        privileged      = true
        interactive     = true
        cap_add         = ["NET_ADMIN", "CHOWN"]
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges:true"]
        group_add       = ["audio"]
        labels = {
          "com.example.team"              = "platform"
          "traefik.http.routers.box.rule" = "Host(`box.example.com`)"
        }
        sysctl = {
          "net.core.somaxconn" = "1024"
        }
        ulimit = {
          nofile = "20000:40000"
          nproc  = "65535"
        }
        shm_size = 268435456
        devices = [
          {
            host_path          = "/dev/fuse"
            container_path     = "/dev/fuse"
            cgroup_permissions = "rwm"
          },
          {
            host_path = "/dev/ttyUSB0"
          },
        ]
        pids_limit = 200
        ipc_mode   = "host"
        force_pull = true
      }
    }
  }

  group "hostnet" {
    count = 1

    network {
      mode = "host"

      port "p9100" {
        static = 9100
      }
    }

    service {
      name     = "hostnet"
      port     = "p9100"
      provider = "nomad"
      task     = "hostnet"
    }

    task "hostnet" {
      driver = "docker"

      config {
        image        = "example/agent:1"
        ports        = ["p9100"]
        network_mode = "host"
        pid_mode     = "host"
      }
    }
  }
}
