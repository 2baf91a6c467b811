//! criu command lines from the options, and what the stdio of a process is to CRIU.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::criu::{dump_args, restore_args, RestorePlan};
use super::*;

fn has(args: &[OsString], seq: &[&str]) -> bool {
    args.windows(seq.len()).any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
}

#[test]
fn dump_declares_binds_and_outside_stdio_as_external() {
    let opts = CheckpointOptions {
        image_path: "/img".into(),
        leave_running: true,
        common: CriuCommon { tcp_established: true, manage_cgroups_mode: Some("full".into()), ..Default::default() },
        ..Default::default()
    };
    let stdio = [
        Stdio::Inherit("pipe[7]".into()),
        Stdio::File("file[18:3]".into(), Some(0)),
        Stdio::Tty("tty[8800:16]".into()),
    ];
    let args =
        dump_args(42, &opts, &stdio, &[PathBuf::from("/data")], Some("/cg/freezer/c".as_ref()), Some(4026532001));
    assert!(has(&args, &["dump", "--tree", "42", "--images-dir", "/img", "--work-dir", "/img"]), "{args:?}");
    for seq in [
        &["--leave-running"][..],
        &["--tcp-established"],
        &["--manage-cgroups=full"],
        &["--freeze-cgroup", "/cg/freezer/c"],
        &["--external", "mnt[/data]:/data"],
        &["--external", "file[18:3]"],
        &["--external", "net[4026532001]:extRootNetNS"],
        &["--external", "tty[8800:16]"],
    ] {
        assert!(has(&args, seq), "{seq:?} in {args:?}");
    }
    assert!(!args.iter().any(|a| a.to_string_lossy().contains("pipe")), "pipes are dumped, not external");
}

#[test]
fn pre_dump_tracks_memory_and_never_leaves_the_tree_stopped() {
    let opts = CheckpointOptions { image_path: "/img".into(), pre_dump: true, ..Default::default() };
    let args = dump_args(1, &opts, &[], &[], None, None);
    assert_eq!(args[0], "pre-dump");
    assert!(has(&args, &["--track-mem"]) && has(&args, &["--manage-cgroups=soft"]));
    assert!(!has(&args, &["--leave-running"]), "pre-dump always leaves it running");
}

#[test]
fn restore_maps_binds_stdio_and_each_cgroup_hierarchy() {
    let plan = RestorePlan {
        images: "/img".as_ref(),
        work: "/work".as_ref(),
        root: "/b/rootfs".as_ref(),
        pid_file: "/run/w/c/criu-restore.pid".as_ref(),
        binds: vec![("/data".into(), "/srv/data".into())],
        inherit: vec![(0, "pipe[7]".into()), (9, "tty[8800:16]".into())],
        cgroup_roots: vec![("cpu,cpuacct".into(), "/c".into()), ("".into(), "/u/c".into())],
        no_pivot: false,
        leave_stopped: true,
        lazy_pages: false,
        auto_dedup: false,
    };
    let args = restore_args(&plan, &CriuCommon { empty_ns: vec!["network".into()], ..Default::default() });
    for seq in [
        &["restore", "--images-dir", "/img", "--work-dir", "/work"][..],
        &["--root", "/b/rootfs", "--restore-detached"],
        &["--pidfile", "/run/w/c/criu-restore.pid"],
        &["--external", "mnt[/data]:/srv/data"],
        &["--inherit-fd", "fd[0]:pipe[7]"],
        &["--inherit-fd", "fd[9]:tty[8800:16]"],
        &["--cgroup-root", "cpu:/c"],
        &["--cgroup-root", "/u/c"],
        &["--leave-stopped"],
        &["--empty-ns", "net"],
    ] {
        assert!(has(&args, seq), "{seq:?} in {args:?}");
    }
    assert!(!has(&args, &["--lazy-pages"]));
    assert!(!has(&args, &["--auto-dedup"]));
    let lazy = RestorePlan { lazy_pages: true, auto_dedup: true, ..plan };
    let args = restore_args(&lazy, &CriuCommon::default());
    assert!(has(&args, &["--lazy-pages"]) && has(&args, &["--auto-dedup"]));
}

#[test]
fn bad_modes_and_namespaces_are_refused() {
    let bad = CriuCommon { manage_cgroups_mode: Some("loose".into()), ..Default::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("--manage-cgroups-mode \"loose\""));
    let bad = CriuCommon { empty_ns: vec!["pid".into()], ..Default::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("--empty-ns \"pid\""));
    let good = CriuCommon { empty_ns: vec!["network".into()], ..Default::default() };
    assert!(good.validate().is_ok());
    let opts = CheckpointOptions { common: good, ..Default::default() };
    assert!(has(&dump_args(1, &opts, &[], &[], None, None), &["--empty-ns", "net"]), "runc's name becomes criu's");
    let skip = CheckpointOptions { skip_network_lock: true, ..Default::default() };
    assert!(has(&dump_args(1, &skip, &[], &[], None, None), &["--network-lock", "skip"]));
    assert!(!has(&dump_args(1, &opts, &[], &[], None, None), &["--network-lock"]));
}

#[test]
fn stdio_of_a_process_as_criu_names_it() {
    let (r, _w) = nix::unistd::pipe().unwrap();
    let me = std::process::id() as i32;
    let inode = std::fs::read_link(format!("/proc/self/fd/{}", r.as_raw_fd())).unwrap();
    let inode = inode.to_string_lossy().trim_start_matches("pipe:[").trim_end_matches(']').to_string();
    assert_eq!(Stdio::of(me, r.as_raw_fd()), Some(Stdio::Inherit(format!("pipe[{inode}]"))));
    let file = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(Stdio::of(me, file.as_raw_fd()), Some(Stdio::File(k, _)) if k.starts_with("file[")));
}

#[test]
fn host_device_nodes_bound_in_are_found_with_their_host_paths() {
    let text = "49 72 0:40 / / rw - overlay overlay rw\n\
                50 49 0:45 / /dev rw,nosuid - tmpfs tmpfs rw\n\
                66 50 0:6 /null /dev/null rw,relatime - devtmpfs devtmpfs rw,size=1k\n\
                80 46 0:6 /null /proc/timer_list rw,relatime - devtmpfs devtmpfs rw\n\
                81 50 0:6 /net/tun /dev/net/tun rw - devtmpfs devtmpfs rw\n";
    let got: Vec<(String, String)> = super::device_binds_in(text)
        .into_iter()
        .map(|d| (d.destination.display().to_string(), d.source.display().to_string()))
        .collect();
    let want = [("/dev/null", "/dev/null"), ("/proc/timer_list", "/dev/null"), ("/dev/net/tun", "/dev/net/tun")];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
}
