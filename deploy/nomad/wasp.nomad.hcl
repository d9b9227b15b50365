# wasp on Nomad: one daemon on every client node with meta wasp_host = "true".
# raw_exec runs the host's /usr/local/bin/wasp (and firecracker, jailer) in
# the host's network, pid and mount namespaces, as under systemd; enable it on
# those clients (plugin "raw_exec" { config { enabled = true } }).
# The API token is a Nomad variable (docs/operations.md, "Deploying the
# daemon"): nomad var put -in hcl nomad/jobs/wasp @wasp-token.nv.hcl

locals {
  # The TOML file every wasp reads (docs/operations.md, section 7).
  wasp_toml = <<-EOT
    [pool]
    name = "default"
    cidr = "10.0.0.0/16"
    bridge = "wasp0"

    [paths]
    runtime_dir = "/var/lib/wasp"
    state_dir = "/run/wasp"
    firecracker = "/usr/local/bin/firecracker"
    jailer = "/usr/local/bin/jailer"

    [spawn]
    ready = "tcp:22"
    parallel = 32
  EOT
}

job "wasp" {
  type = "system"

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  constraint {
    attribute = "${meta.wasp_host}"
    value     = "true"
  }

  # A new version restarts each node's daemon, which ends its clones: one
  # node at a time, each ready before the next.
  update {
    max_parallel     = 1
    min_healthy_time = "30s"
    healthy_deadline = "10m"
  }

  group "wasp" {
    network {
      mode = "host"

      port "api" {
        static = 7070
      }

      port "metrics" {
        static = 9070
      }
    }

    restart {
      attempts = 3
      interval = "10m"
      delay    = "5s"
      mode     = "delay"
    }

    # Placers list the ready daemons: nomad service info wasp-api
    service {
      provider = "nomad"
      name     = "wasp-api"
      port     = "api"

      check {
        name     = "readyz"
        type     = "http"
        port     = "metrics"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    # Prometheus finds these with nomad_sd_configs (keep service wasp-metrics).
    service {
      provider = "nomad"
      name     = "wasp-metrics"
      port     = "metrics"
      tags     = ["metrics", "prometheus"]

      meta {
        metrics_path = "/metrics"
      }

      check {
        name     = "healthz"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # Fails the allocation, with doctor's line in its log, on a node without
    # /dev/kvm, /dev/net/tun or nf_tables.
    task "doctor" {
      driver = "raw_exec"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        command = "/usr/local/bin/wasp"
        args    = ["doctor"]
      }

      env {
        WASP_CONFIG = "${NOMAD_TASK_DIR}/wasp.toml"
      }

      template {
        data        = local.wasp_toml
        destination = "local/wasp.toml"
        change_mode = "noop"
      }
    }

    task "wasp" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/wasp"
        args = [
          "serve",
          "--listen", "unix:/run/wasp/wasp.sock",
          "--listen", "tcp:${NOMAD_ADDR_api}",
          "--token-file", "${NOMAD_SECRETS_DIR}/api-token",
          "--metrics", "${NOMAD_ADDR_metrics}",
          "--kill-on-exit",
        ]
      }

      env {
        WASP_CONFIG = "${NOMAD_TASK_DIR}/wasp.toml"
      }

      # change_mode "noop": the default ("restart") would restart the daemon,
      # and so end every clone, each time a template changes.
      template {
        data        = local.wasp_toml
        destination = "local/wasp.toml"
        change_mode = "noop"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/wasp\" }}{{ .api_token }}{{ end }}"
        destination = "secrets/api-token"
        perms       = "0600"
        change_mode = "noop"
      }

      # Nomad ends every process of a stopped task, the VMMs included: on
      # SIGTERM the daemon finishes the requests in flight, then tears the
      # clones down in order (--kill-on-exit) instead.
      kill_signal    = "SIGTERM"
      kill_timeout   = "120s"
      # Deregister first, so placers stop choosing this node, then stop.
      shutdown_delay = "5s"

      # What Nomad reserves for the task when it places others on the node.
      # The VMMs are this task's processes: size it for the clones the node
      # holds (docs/operations.md, section 5).
      resources {
        cpu    = 1000
        memory = 2048
      }
    }
  }
}
