//! The runc-compatible command line: spec, list, ps, state, --log, --pid-file.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

#[test]
fn spec_writes_a_default_config() -> Result<()> {
    let t = Test::new("spec");
    let dir = t.dir().join("specdir");
    std::fs::create_dir(&dir)?;
    let mut c = command(warren_bin());
    c.arg("spec").current_dir(&dir);
    run_with_deadline(c, &t.dir().join("spec1"), DEADLINE)?.ok()?;
    let cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    ensure!(cfg["ociVersion"].is_string(), "{cfg}");
    ensure!(cfg["root"]["path"] == "rootfs", "root: {}", cfg["root"]);
    ensure!(cfg["process"]["args"].is_array(), "args: {}", cfg["process"]);
    let ns: Vec<&str> = cfg["linux"]["namespaces"]
        .as_array()
        .context("namespaces")?
        .iter()
        .filter_map(|n| n["type"].as_str())
        .collect();
    for want in ["pid", "network", "ipc", "uts", "mount"] {
        ensure!(ns.contains(&want), "no {want} namespace in {ns:?}");
    }
    // Like runc: refuse to overwrite an existing config.json.
    let mut c = command(warren_bin());
    c.arg("spec").current_dir(&dir);
    run_with_deadline(c, &t.dir().join("spec2"), DEADLINE)?.failed()?;
    Ok(())
}

#[test]
fn spec_bundle_option() -> Result<()> {
    let t = Test::new("spec_bundle");
    let dir = t.dir().join("b");
    std::fs::create_dir(&dir)?;
    t.cmd(&["spec", "--bundle", dir.to_str().unwrap()])?.ok()?;
    ensure!(dir.join("config.json").is_file(), "no config.json in --bundle dir");
    Ok(())
}

#[test]
fn help_lists_the_verbs() -> Result<()> {
    let t = Test::new("help");
    let out = t.cmd(&["--help"])?;
    out.ok()?;
    for verb in ["create", "start", "run", "state", "kill", "delete", "exec", "ps", "list", "pause", "resume", "spec"] {
        ensure!(out.stdout.contains(verb), "--help lacks {verb}: {out}");
    }
    t.cmd(&["--version"])?.ok()?;
    Ok(())
}

#[test]
fn list_table_json_and_quiet() -> Result<()> {
    let t = Test::new("list");
    let b = t.bundle(&["sleep", "100"])?;
    let (a_id, b_id) = (t.id("a"), t.id("b"));
    let a = t.create(&a_id, &b)?;
    let c = t.start_new(&b_id, &b)?;
    let table = t.cmd(&["list"])?;
    table.ok()?;
    let header = table.stdout.lines().next().unwrap_or("");
    for col in ["ID", "PID", "STATUS", "BUNDLE", "CREATED"] {
        ensure!(header.contains(col), "header lacks {col}: {table}");
    }
    let row = |id: &str| table.stdout.lines().find(|l| l.starts_with(id)).map(str::to_string);
    ensure!(row(&a_id).is_some_and(|r| r.contains("created")), "{table}");
    ensure!(row(&b_id).is_some_and(|r| r.contains("running")), "{table}");

    let json = t.cmd(&["list", "--format", "json"])?;
    let v: Value = serde_json::from_str(&json.ok()?.stdout).context("list json")?;
    let ids: Vec<&str> = v.as_array().context("array")?.iter().filter_map(|c| c["id"].as_str()).collect();
    ensure!(ids.len() == 2 && ids.contains(&a_id.as_str()) && ids.contains(&b_id.as_str()), "{v}");
    let entry = v.as_array().unwrap().iter().find(|c| c["id"] == b_id.as_str()).unwrap();
    ensure!(entry["status"] == "running" && entry["pid"].as_i64() > Some(0), "{entry}");
    ensure!(entry["bundle"] == b.path().to_str().unwrap(), "{entry}");

    let quiet = t.cmd(&["list", "-q"])?;
    let mut got: Vec<&str> = quiet.ok()?.stdout.lines().collect();
    got.sort();
    let mut want = vec![a_id.as_str(), b_id.as_str()];
    want.sort();
    ensure!(got == want, "list -q: {quiet}");
    drop((a, c));
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn list_empty_root() -> Result<()> {
    let t = Test::new("list_empty");
    let out = t.cmd(&["list", "--format", "json"])?;
    let v: Value = serde_json::from_str(out.ok()?.stdout.trim()).context("list json")?;
    ensure!(v.as_array().is_some_and(|a| a.is_empty()) || v.is_null(), "{v}");
    Ok(())
}

#[test]
fn ps_json_and_table() -> Result<()> {
    let t = Test::new("ps");
    let b = t.bundle(&["sh", "-c", "sleep 100 & exec sleep 101"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    let pid = c.pid()?;
    // The background sleep may take a moment to appear.
    let mut pids = Vec::new();
    for _ in 0..100 {
        let out = t.cmd(&["ps", "--format", "json", &c.id])?;
        let v: Value = serde_json::from_str(&out.ok()?.stdout).context("ps json")?;
        pids = v.as_array().context("array")?.iter().filter_map(Value::as_i64).collect();
        if pids.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(pids.len() == 2 && pids.contains(&(pid as i64)), "ps pids {pids:?}, init {pid}");
    let table = t.cmd(&["ps", &c.id])?;
    ensure!(table.ok()?.stdout.contains("PID") && table.stdout.contains("sleep"), "{table}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn state_of_unknown_container_fails() -> Result<()> {
    let t = Test::new("state_unknown");
    let out = t.cmd(&["state", "wt-no-such-container"])?;
    out.failed()?;
    ensure!(!out.error_line().is_empty(), "no error message: {out}");
    Ok(())
}

#[test]
fn pid_file_holds_init_pid() -> Result<()> {
    let t = Test::new("pid_file");
    let b = t.bundle(&["sleep", "100"])?;
    let pidfile = t.dir().join("pid");
    let c = t.warren.create_with(&t.id("c"), &b, &["--pid-file", pidfile.to_str().unwrap()])?;
    let written: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    ensure!(written == c.pid()?, "pid file {written} vs state {}", c.pid()?);
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn log_json_reports_errors() -> Result<()> {
    // The containerd shim reads a failing runtime's error from --log.
    let t = Test::new("log_json");
    let log = t.dir().join("log.json");
    let l = log.to_str().unwrap();
    t.cmd(&["--log", l, "--log-format", "json", "state", "wt-nope"])?.failed()?;
    let text = std::fs::read_to_string(&log).context("no log file")?;
    let errors: Vec<Value> =
        text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["level"] == "error").collect();
    ensure!(!errors.is_empty() && errors[0]["msg"].is_string(), "log: {text:?}");
    Ok(())
}

/// `run` in the foreground with process.terminal and no --console-socket
/// makes its own pty and relays it, as `runc run` does: the process sees a
/// terminal on its stdio and the exit code comes back. script(1) gives the
/// runtime a terminal of its own.
#[test]
fn run_with_terminal_relays_a_pty() -> Result<()> {
    let t = Test::new("tty_relay");
    let b = t.bundle(&["sh", "-c", "tty; [ -t 0 ] && [ -t 1 ] && echo both-ttys; exit 4"])?;
    b.edit(|c| c["process"]["terminal"] = Value::Bool(true))?;
    let id = t.id("c");
    let inner = format!(
        "{} --root {} run --bundle {} {id}",
        warren_bin().display(),
        t.warren.root().display(),
        b.path().display()
    );
    let mut cmd = command("script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    let out = run_with_deadline(cmd, &t.dir().join("tty"), Duration::from_secs(30))?;
    ensure!(out.status.and_then(|s| s.code()) == Some(4), "{out}");
    ensure!(out.stdout.contains("/dev/pts/0") && out.stdout.contains("both-ttys"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn features_document() -> Result<()> {
    let t = Test::new("features");
    let out = t.cmd(&["features"])?;
    let v: Value = serde_json::from_str(&out.ok()?.stdout)?;
    ensure!(v["ociVersionMax"] == "1.2.0", "{v}");
    let hooks = v["hooks"].as_array().context("hooks")?;
    ensure!(hooks.len() == 6, "{v}");
    let ns: Vec<&str> = v["linux"]["namespaces"].as_array().context("ns")?.iter().filter_map(|n| n.as_str()).collect();
    ensure!(ns.contains(&"time") && ns.contains(&"user") && ns.contains(&"cgroup"), "{v}");
    ensure!(v["linux"]["seccomp"]["enabled"] == true, "{v}");
    let mp = &v["linux"]["memoryPolicy"];
    let modes: Vec<&str> = mp["modes"].as_array().context("modes")?.iter().filter_map(|m| m.as_str()).collect();
    ensure!(modes.contains(&"MPOL_BIND") && modes.contains(&"MPOL_LOCAL") && modes.len() == 7, "{v}");
    ensure!(mp["flags"].as_array().context("flags")?.len() == 3, "{v}");
    // Not implemented: intelRdt is refused at create, so never reported as enabled.
    ensure!(v["linux"]["intelRdt"]["enabled"] == false, "{v}");
    Ok(())
}

#[test]
fn run_no_pivot() -> Result<()> {
    let t = Test::new("no_pivot");
    let b = t.bundle(&["sh", "-c", "ls /bin/busybox && cat /proc/1/cmdline | tr '\\0' ' '"])?;
    let id = t.id("c");
    let out = t.cmd(&["run", "--no-pivot", "--bundle", b.path().to_str().unwrap(), &id])?;
    ensure!(out.ok()?.stdout.starts_with("/bin/busybox\nsh -c"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

/// state.json holds the whole spec, process.env (secrets) included: the state root, each
/// container's directory and its state file are the owner's alone, as runc's.
#[test]
fn state_is_private() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let t = Test::new("state_private");
    let b = t.bundle(&["sleep", "30"])?;
    b.edit(|c| c["process"]["env"].as_array_mut().unwrap().push(json!("API_TOKEN=hunter2")))?;
    let id = t.id("c");
    let c = t.create(&id, &b)?;
    let root = t.warren.root().to_path_buf();
    let dir = root.join(&id);
    for (path, want) in [(&root, 0o700), (&dir, 0o700), (&dir.join("state.json"), 0o600)] {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
        ensure!(mode == want, "{}: mode {mode:o}, want {want:o}", path.display());
    }
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        // Not the exec fifo: opening it would wait for a writer.
        if !entry.file_type()?.is_file() {
            continue;
        }
        let holds_secret = std::fs::read(entry.path()).is_ok_and(|b| String::from_utf8_lossy(&b).contains("hunter2"));
        let mode = entry.metadata()?.permissions().mode();
        ensure!(!holds_secret || mode & 0o077 == 0, "{:?} holds the secret with mode {mode:o}", entry.path());
    }
    c.kill("KILL")?;
    t.cmd(&["delete", "--force", &id])?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

/// runc's parser takes a flag given twice, the last one winning; clients and test tools
/// pass flags that way (a global --root before the verb, then another).
#[test]
fn repeated_flags_last_one_wins() -> Result<()> {
    let t = Test::new("flags_twice");
    let b = t.bundle(&["sleep", "30"])?;
    let id = t.id("c");
    let c = t.create(&id, &b)?;
    let root = t.warren.root().to_string_lossy().into_owned();
    let elsewhere = t.dir().join("elsewhere").to_string_lossy().into_owned();
    // The harness passes --root ROOT first: a second --root wins.
    let out = t.cmd(&["--root", &elsewhere, "state", &id])?;
    out.failed()?;
    ensure!(out.stderr.contains("does not exist"), "{out}");
    t.cmd(&["--root", &elsewhere, "--root", &root, "state", &id])?.ok()?;
    t.cmd(&["--debug", "--debug", "--log-format", "json", "--log-format", "text", "state", &id])?.ok()?;
    // A verb's own flags too, and repeatable flags still add up.
    let out = c.exec(&["-e", "A=1", "-e", "B=2", "--cwd", "/", "--cwd", "/tmp"], &["sh", "-c", "echo $A$B; pwd"])?;
    ensure!(out.ok()?.stdout.split_whitespace().collect::<Vec<_>>() == ["12", "/tmp"], "{out}");
    t.cmd(&["delete", "--force", "--force", &id])?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn man_pages_and_completions_come_from_the_command_line() -> Result<()> {
    let t = Test::new("docs");
    let dir = t.dir().join("man");
    t.cmd(&["man", &dir.to_string_lossy()])?.ok()?;
    let page = std::fs::read_to_string(dir.join("warren-tenant-create.1"))?;
    ensure!(page.contains(".SH SYNOPSIS") && page.contains("\\-\\-image"), "{page}");
    for verb in ["warren.1", "warren-create.1", "warren-tenant-set.1", "warren-image-import.1"] {
        ensure!(dir.join(verb).exists(), "no {verb}");
    }
    ensure!(!dir.join("warren-tenant-supervise.1").exists(), "a hidden verb got a page");
    let script = t.cmd(&["completion", "bash"])?;
    let path = t.dir().join("warren.bash");
    std::fs::write(&path, &script.ok()?.stdout)?;
    // Completing `warren tenant cr` in bash offers `create`.
    let probe = format!(
        "source {}; COMP_WORDS=(warren tenant cr); COMP_CWORD=2; COMP_LINE='warren tenant cr'; COMP_POINT=16; \
         _warren warren cr tenant; echo \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = std::process::Command::new("bash").arg("-c").arg(probe).output()?;
    let words = String::from_utf8_lossy(&out.stdout);
    ensure!(words.split_whitespace().any(|w| w == "create"), "completions: {words:?}");
    t.assert_no_leftovers();
    Ok(())
}

/// A verb that runs out of descriptors says so: the container's lock failing with EMFILE
/// once read as "container does not exist" (containerd then dropped a live task).
#[test]
fn out_of_descriptors_is_not_a_missing_container() -> Result<()> {
    let t = Test::new("emfile_not_missing");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.create(&t.id("c"), &b)?;
    let root = t.warren.root().to_string_lossy().into_owned();
    let mut outcomes = Vec::new();
    // 3 leaves only stdio; each step up lets the command get a little further.
    for limit in 3..=12 {
        let mut cmd = command("prlimit");
        cmd.arg(format!("--nofile={limit}:{limit}")).arg("--").arg(warren_bin());
        cmd.args(["--root", &root, "start", &c.id]);
        let out = run_with_deadline(cmd, &t.dir().join(format!("start-{limit}")), Duration::from_secs(20))?;
        ensure!(!out.stderr.contains("does not exist"), "limit {limit}: {out}");
        if out.success() {
            outcomes.push(format!("{limit} ok"));
            break;
        }
        ensure!(out.stderr.contains("Too many open files"), "limit {limit}: not EMFILE: {out}");
        outcomes.push(format!("{limit} EMFILE"));
    }
    ensure!(outcomes.first().is_some_and(|o| o.ends_with("EMFILE")), "no limit hit EMFILE: {outcomes:?}");
    if !outcomes.last().is_some_and(|o| o.ends_with("ok")) {
        c.start()?.ok()?;
    }
    ensure!(c.status()? == "running", "after {outcomes:?}: {}", c.status()?);
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}
