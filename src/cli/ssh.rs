//! `banger vm ssh`, `banger vm ssh-proxy` (ssh's ProxyCommand) and `banger ssh-config`.
//!
//! ```text
//!  banger vm ssh dev ──exec──▶ ssh -i KEY -o UserKnownHostsFile=KH -o HostKeyAlias=dev.vm
//!                                  -o ProxyCommand="banger vm ssh-proxy dev" root@dev.vm
//!  ssh ──stdin/stdout──▶ banger vm ssh-proxy dev ──vm.exec (stdin lines)──▶ bangerd
//!        ──agent exec──▶ banger-agent --tcp-connect 127.0.0.1:22 ──TCP──▶ the guest's sshd
//! ```
//!
//! The proxy is an ordinary `vm.exec` with a stdin pipe: no new wire message, no port open
//! to any network, no route to the guest needed. `vm ssh` checks what it can say clearly
//! before handing the terminal to ssh (the VM runs, a host key is recorded, ssh exists), then
//! replaces itself with ssh, so that ssh owns the terminal and its exit status is banger's.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use banger_events::VmState;

use super::args::{SshConfigArgs, VmSshArgs, VmSshProxyArgs};
use super::connect::{call, layout};
use super::error::CliError;
use super::output::line;
use super::vm::{Io, exec_params, run_exec};
use crate::api::{NameParams, VmName, VmShowResult, VmSshStatus};
use crate::host::ssh::{ClientOptions, SshFiles, host_alias, write_config};
use crate::operations::vm_ssh::GUEST_USER;

/// This program, for the ProxyCommand.
fn banger_exe() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(|e| CliError::failed("cannot tell where banger is", e))
}

/// `ssh` on PATH.
fn find_ssh() -> Result<PathBuf, CliError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("ssh"))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            CliError::message(
                "ssh is not installed on this host (no `ssh` on PATH): install the OpenSSH \
                 client (Debian, Ubuntu: `apt-get install openssh-client`), or use `banger vm \
                 exec -tt NAME -- bash` for a shell through the agent",
            )
        })
}

/// Why `vm ssh NAME` cannot go on, if it cannot.
pub fn ssh_refusal(shown: &VmShowResult) -> Option<String> {
    let name = &shown.vm.name;
    if shown.vm.state != VmState::Running {
        return Some(format!(
            "VM {name} is {}, not running; start it with `banger vm start {name}`",
            shown.vm.state
        ));
    }
    if shown.vm.host_key.is_some() {
        return None;
    }
    let instead = format!("`banger vm exec -tt {name} -- bash` opens a shell through the agent");
    Some(match &shown.ssh {
        Some(VmSshStatus::NoSshd) => format!(
            "VM {name}'s image has no ssh server, so there is no host key to check; {instead}"
        ),
        Some(VmSshStatus::Failed { reason }) => format!(
            "no ssh host key is recorded for {name}: the ssh setup at its boot failed ({reason}); \
             {instead}"
        ),
        _ => format!(
            "no ssh host key is recorded for {name} yet (its image may have no ssh server; \
             `banger vm restart {name}` sets ssh up again); {instead}"
        ),
    })
}

/// The `ssh:` line of `vm show`.
pub fn status_text(name: &str, status: &VmSshStatus) -> String {
    match status {
        VmSshStatus::Ready {
            user,
            fingerprint_sha256,
        } => format!("ready for {user} (host key {fingerprint_sha256}): `banger vm ssh {name}`"),
        VmSshStatus::NoSshd => format!(
            "the image has no ssh server; `banger vm exec -tt {name} -- bash` opens a shell"
        ),
        VmSshStatus::Failed { reason } => format!("not set up at the last boot: {reason}"),
        VmSshStatus::HostKeyChanged {
            recorded_sha256,
            presented_sha256,
        } => format!(
            "the guest now presents host key {presented_sha256}, not the recorded \
             {recorded_sha256}: ssh refuses it (not recorded)"
        ),
    }
}

/// `banger vm ssh NAME [-- ARGS]`: ssh replaces this process.
pub async fn vm_ssh(args: VmSshArgs) -> Result<(), CliError> {
    let shown: VmShowResult = call(
        "vm.show",
        &NameParams {
            name: args.name.to_string(),
        },
    )
    .await?;
    if let Some(refusal) = ssh_refusal(&shown) {
        return Err(CliError::message(refusal));
    }
    if let Some(VmSshStatus::HostKeyChanged {
        recorded_sha256,
        presented_sha256,
    }) = &shown.ssh
    {
        eprintln!(
            "banger: warning: at its last boot {} presented host key {presented_sha256}, not the \
             recorded {recorded_sha256}; ssh will refuse it",
            shown.vm.name
        );
    }
    let ssh = find_ssh()?;
    let layout = layout()?;
    // bangerd made the key at the VM's boot; made here too if this CLI has another view.
    SshFiles::new(&layout)
        .ensure_key_pair()
        .map_err(|e| CliError::failed("banger's ssh key", e))?;
    let alias = host_alias(args.name.as_str());
    let options = ClientOptions::new(&layout, &banger_exe()?, args.name.as_str());
    let error = std::process::Command::new(&ssh)
        .args(options.ssh_args(&alias))
        .arg(format!("{GUEST_USER}@{alias}"))
        .args(&args.ssh_args)
        .exec();
    Err(CliError::failed(
        format!("cannot run {}", ssh.display()),
        error,
    ))
}

/// The VM name ssh's `%n` gives (`dev.vm`), or a plain one.
pub fn proxy_target(name: &str) -> Result<VmName, CliError> {
    let bare = name.strip_suffix(".vm").unwrap_or(name);
    VmName::parse(bare).map_err(|e| CliError::Usage(format!("{name:?}: {e}")))
}

/// `banger vm ssh-proxy NAME [--port N]`: stdin to the guest's port, the port to stdout.
pub async fn vm_ssh_proxy(args: VmSshProxyArgs) -> Result<(), CliError> {
    let name = proxy_target(&args.name)?;
    let params = exec_params(
        name,
        vec![
            "/proc/self/exe".into(),
            "--tcp-connect".into(),
            format!("127.0.0.1:{}", args.port),
        ],
        Default::default(),
        None,
        Io::Pipes { stdin: true },
    );
    match run_exec(&params, Io::Pipes { stdin: true }).await? {
        0 => Ok(()),
        code => Err(CliError::CommandStatus { code }),
    }
}

/// `banger ssh-config [--write]`.
pub fn config(args: SshConfigArgs) -> Result<(), CliError> {
    let layout = layout()?;
    let options = ClientOptions::new(&layout, &banger_exe()?, "%n");
    let entry = options.config_entry();
    if !args.write {
        print!("{entry}");
        return Ok(());
    }
    let files = SshFiles::new(&layout);
    files
        .ensure_key_pair()
        .map_err(|e| CliError::failed("banger's ssh key", e))?;
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| CliError::message("HOME is not set: cannot find ~/.ssh/config"))?;
    let written = write_config(&files, &entry, &home)
        .map_err(|e| CliError::failed("cannot write the ssh config", e))?;
    line(format!(
        "{} {}",
        if written.entry_changed {
            "wrote"
        } else {
            "unchanged:"
        },
        written.entry_file.display()
    ))?;
    line(if written.include_added {
        format!(
            "added an Include of it at the top of {}",
            written.user_config.display()
        )
    } else {
        format!("{} already includes it", written.user_config.display())
    })?;
    line("`ssh NAME.vm` now reaches every running VM (try `ssh dev.vm`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_takes_names_as_ssh_gives_them() {
        assert_eq!(proxy_target("dev.vm").unwrap().as_str(), "dev");
        assert_eq!(proxy_target("dev").unwrap().as_str(), "dev");
        assert!(proxy_target("Dev.vm").is_err());
        assert!(proxy_target("a.b.vm").is_err());
    }
}
