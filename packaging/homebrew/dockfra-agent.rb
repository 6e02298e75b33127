# Homebrew formula for the dockfra agent (macOS; Linuxbrew too). Installs the prebuilt static
# binary of a GitHub release, checked against its sha256; `--HEAD` builds from git instead.
# Homebrew installs formulae from a tap only, so put this file in one, e.g. a local tap:
#   brew tap-new "$USER/dockfra"
#   packaging/homebrew/render-formula target/cross/dist/SHA256SUMS \
#     --base-url https://github.com/OWNER/dockfra/releases/download \
#     -o "$(brew --repository "$USER/dockfra")/Formula/dockfra-agent.rb"
#   brew install "$USER/dockfra/dockfra-agent"           (--HEAD: cargo build from git)
#   dockfra-agent --config "$(brew --prefix)/etc/dockfra/agent.yaml" enroll \
#     --coordinator https://COORD:7443 --token dkf1....
#   brew services start dockfra-agent        # launchd agent of this user (Docker Desktop is per user)
#   sudo brew services start dockfra-agent   # or a LaunchDaemon as root, started at boot
# No bottles: the binaries are static (on macOS they link only libSystem), so there is nothing
# to build or relocate. They come from cross/build (target/cross/dist and its SHA256SUMS); the
# macOS ones are cross-built on Linux with zig and checked there (cross/check-macho,
# packaging/check-brew), never run there.
# This checked-in file is the template: OWNER is a placeholder and every sha256 is 0. For a
# release, render it with the real sums (packaging/homebrew/render-formula SHA256SUMS; it also
# sets version, the download base URL and the tag v<version>) and upload the binaries as the
# release's assets under their dist names.
class DockfraAgent < Formula
  desc "Agent that verifies signed bundles and carries out releases on this host"
  homepage "https://github.com/OWNER/dockfra"
  version "0.2.0"
  license "Apache-2.0"

  head do
    url "https://github.com/OWNER/dockfra.git", branch: "main"
    # protoc comes from the protoc-bin-vendored crate: no protobuf dependency.
    depends_on "rust" => :build
  end

  # Each url is one raw binary: Homebrew stages a download that is not an archive as is, under
  # its basename, in the build directory. Homebrew has no 32-bit ARM, so armv7 is not here.
  on_macos do
    on_arm do
      url "https://github.com/OWNER/dockfra/releases/download/v0.2.0/dockfra-agent-aarch64-apple-darwin"
      sha256 "0000000000000000000000000000000000000000000000000000000000000000"
    end
    on_intel do
      url "https://github.com/OWNER/dockfra/releases/download/v0.2.0/dockfra-agent-x86_64-apple-darwin"
      sha256 "0000000000000000000000000000000000000000000000000000000000000000"
    end
  end

  on_linux do
    on_arm do
      url "https://github.com/OWNER/dockfra/releases/download/v0.2.0/dockfra-agent-aarch64-unknown-linux-gnu"
      sha256 "0000000000000000000000000000000000000000000000000000000000000000"
    end
    on_intel do
      url "https://github.com/OWNER/dockfra/releases/download/v0.2.0/dockfra-agent-x86_64-unknown-linux-musl"
      sha256 "0000000000000000000000000000000000000000000000000000000000000000"
    end
  end

  def install
    if build.head?
      system "cargo", "install", *std_cargo_args(path: "agent")
    else
      staged = Dir["dockfra-agent-*"]
      if staged.length != 1
        odie "expected one downloaded dockfra-agent-<triple> in #{buildpath}, found #{staged.inspect}"
      end
      # A raw download is staged without the executable bit.
      chmod 0755, staged.first
      bin.install staged.first => "dockfra-agent"
    end

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
    # A --HEAD install's version is HEAD-<commit>; its binary reports the crate's version.
    assert_match(version.head? ? "dockfra-agent " : version.to_s,
                 shell_output("#{bin}/dockfra-agent --version"))
    (testpath/"agent.yaml").write "state_dir: #{testpath}/state\n"
    output = shell_output("#{bin}/dockfra-agent --config #{testpath}/agent.yaml status 2>&1", 78)
    assert_match "not enrolled", output
  end
end
