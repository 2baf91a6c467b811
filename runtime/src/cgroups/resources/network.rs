//! network: v1 net_cls.classid and net_prio.ifpriomap (cgroup v2 has neither).

use std::path::Path;

use oci_spec::runtime::LinuxInterfacePriority;

use super::{add, invalid, set, CgroupError};

pub const CLASS_ID: &str = "linux.resources.network.classID";
pub const PRIORITIES: &str = "linux.resources.network.priorities";

/// Interface names are the first word of an ifpriomap line.
pub fn validate(priorities: &[LinuxInterfacePriority]) -> Result<(), CgroupError> {
    match priorities.iter().find(|p| p.name().is_empty() || p.name().contains(char::is_whitespace)) {
        Some(p) => Err(invalid(PRIORITIES, format!("{:?}", p.name()), "is not a network interface name")),
        None => Ok(()),
    }
}

pub fn apply_class_id(class_id: u32, dir: &Path) -> Result<(), CgroupError> {
    set(dir, "net_cls.classid", &class_id.to_string(), CLASS_ID)
}

/// One "interface priority" write per interface.
pub fn apply_priorities(priorities: &[LinuxInterfacePriority], dir: &Path) -> Result<(), CgroupError> {
    for p in priorities {
        add(dir, "net_prio.ifpriomap", &format!("{} {}", p.name(), p.priority()), PRIORITIES)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxInterfacePriorityBuilder;
    use std::fs::{read_to_string, write};

    fn priority(name: &str, priority: u32) -> LinuxInterfacePriority {
        LinuxInterfacePriorityBuilder::default().name(name).priority(priority).build().unwrap()
    }

    #[test]
    fn class_id_and_priorities() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("net_cls.classid"), "0\n").unwrap();
        write(tmp.path().join("net_prio.ifpriomap"), "").unwrap();
        apply_class_id(0x10_0001, tmp.path()).unwrap();
        let priorities = [priority("eth0", 5), priority("lo", 1)];
        validate(&priorities).unwrap();
        apply_priorities(&priorities, tmp.path()).unwrap();
        assert_eq!(read_to_string(tmp.path().join("net_cls.classid")).unwrap(), "1048577\n");
        assert_eq!(read_to_string(tmp.path().join("net_prio.ifpriomap")).unwrap(), "eth0 5\nlo 1\n");
        let err = validate(&[priority("eth 0", 1)]).unwrap_err();
        assert!(err.to_string().starts_with("linux.resources.network.priorities: \"eth 0\""), "{err}");
    }
}
