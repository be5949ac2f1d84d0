//! A real OpenSSH server on 127.0.0.1 for the ssh transport tests: a
//! throwaway host key, client key and port; root logs in with the key only.

use crate::TempDir;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    /// Client key (private) and a client config using it.
    pub key: PathBuf,
    pub client_config: PathBuf,
}

fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(
        o.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes an ssh client config for this server using `key`.
pub fn client_config(path: &Path, port: u16, key: &Path) {
    fs::write(
        path,
        format!(
            "Host 127.0.0.1\n  Port {port}\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n  BatchMode yes\n",
            key.display()
        ),
    )
    .unwrap();
}

/// The sparsebak config line making ssh use `client_config`.
pub fn ssh_command_setting(client_config: &Path) -> String {
    format!(
        "ssh_command = [\"ssh\", \"-F\", \"{}\"]\n",
        client_config.display()
    )
}

impl Sshd {
    pub fn start() -> Sshd {
        crate::require_root_and_loop();
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.is_file(),
            "the ssh tests need /usr/sbin/sshd (Debian: openssh-server)"
        );
        let dir = TempDir::new("sshd");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        fs::create_dir_all("/run/sshd").unwrap();
        let cfg = d.join("sshd_config");
        fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_key\nAuthorizedKeysFile {0}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nPidFile {0}/sshd.pid\nLogLevel ERROR\n",
                d.display()
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its log (the readiness probe shows up there) stays in its dir.
            .stderr(fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sshd did not start on port {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let key = d.join("client_key");
        let client = d.join("ssh_config");
        client_config(&client, port, &key);
        Sshd {
            child,
            port,
            dir,
            key,
            client_config: client,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
