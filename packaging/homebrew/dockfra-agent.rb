# Homebrew formula for the dockfra agent (macOS; Linuxbrew too). Builds from source. Homebrew
# installs formulae from a tap only, so put this file in one, e.g. a local tap:
#   brew tap-new "$USER/dockfra"
#   cp packaging/homebrew/dockfra-agent.rb "$(brew --repository "$USER/dockfra")/Formula/"
#   brew install --build-from-source "$USER/dockfra/dockfra-agent"    (--HEAD: from git)
#   dockfra-agent --config "$(brew --prefix)/etc/dockfra/agent.yaml" enroll \
#     --coordinator https://COORD:7443 --token dkf1....
#   brew services start dockfra-agent        # launchd agent of this user (Docker Desktop is per user)
#   sudo brew services start dockfra-agent   # or a LaunchDaemon as root, started at boot
# OWNER, url and sha256 are placeholders: set them to this repository and the sha256 of a
# release tarball when publishing the tap.
class DockfraAgent < Formula
  desc "Agent that verifies signed bundles and carries out releases on this host"
  homepage "https://github.com/OWNER/dockfra"
  url "https://github.com/OWNER/dockfra/archive/refs/tags/v0.2.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"
  head "https://github.com/OWNER/dockfra.git", branch: "main"

  # protoc comes from the protoc-bin-vendored crate: no protobuf dependency.
  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args(path: "agent")

    (buildpath/"agent.yaml").write <<~YAML
      # dockfra-agent configuration (`dockfra-agent --config #{etc}/dockfra/agent.yaml ...`;
      # `brew services` runs the agent with it). Flags win over this file; unknown keys are
      # an error. Homebrew keeps your edits on upgrade (a new default lands beside it as
      # agent.yaml.default).

      # Identity, journal, blobs and releases.
      state_dir: #{var}/lib/dockfra

      # Push mode: where to listen for the coordinator (default 0.0.0.0:<agent.port>, 7444).
      #listen: 0.0.0.0:7444

      # The coordinator `dockfra-agent enroll` contacts when --coordinator is not given.
      #coordinator: https://coordinator.example.com:7443
    YAML
    # etc is Homebrew's InstallRenamed path: an existing, different agent.yaml is never
    # overwritten; the new one is written as agent.yaml.default instead.
    (etc/"dockfra").install "agent.yaml"
  end

  def post_install
    (var/"lib/dockfra").mkpath
    (var/"log").mkpath
  end

  def caveats
    <<~EOS
      Enroll once, then start the service:
        dockfra-agent --config #{etc}/dockfra/agent.yaml enroll --coordinator https://COORD:7443 --token dkf1....
        brew services start dockfra-agent
      Started before enrollment the agent exits with "not enrolled" (status 78) and launchd
      retries it every 30 s; the reason is in #{var}/log/dockfra-agent.log.
    EOS
  end

  service do
    run [opt_bin/"dockfra-agent", "--config", etc/"dockfra/agent.yaml", "run"]
    # Restart after a failure (non-zero exit or crash), not after a clean stop.
    keep_alive successful_exit: false
    throttle_interval 30
    working_dir var/"lib/dockfra"
    log_path var/"log/dockfra-agent.log"
    error_log_path var/"log/dockfra-agent.log"
    # docker/podman from Homebrew, Docker Desktop's CLI (/usr/local/bin, or inside the app).
    environment_variables PATH: "#{std_service_path_env}:/usr/local/bin:" \
                                "/Applications/Docker.app/Contents/Resources/bin"
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/dockfra-agent --version")
    (testpath/"agent.yaml").write "state_dir: #{testpath}/state\n"
    output = shell_output("#{bin}/dockfra-agent --config #{testpath}/agent.yaml status 2>&1", 78)
    assert_match "not enrolled", output
  end
end
