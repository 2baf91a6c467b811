//! hugetlb: limits per huge page size (v1 hugetlb.<size>.limit_in_bytes, v2 hugetlb.<size>.max).

use oci_spec::runtime::LinuxHugepageLimit;

use super::{invalid, set, CgroupError, Dir};

pub const PAGE_SIZE: &str = "linux.resources.hugepageLimits.pageSize";
pub const LIMIT: &str = "linux.resources.hugepageLimits.limit";

/// Page sizes as the kernel names them ("64KB", "2MB", "1GB") and offered here; limits not
/// negative.
pub fn validate(limits: &[LinuxHugepageLimit], dir: Dir) -> Result<(), CgroupError> {
    for limit in limits {
        let size = limit.page_size();
        if !is_page_size(size) {
            return Err(invalid(PAGE_SIZE, format!("{size:?}"), "is not a page size such as 2MB or 1GB"));
        }
        if limit.limit() < 0 {
            return Err(invalid(LIMIT, format!("{} (pageSize {size})", limit.limit()), "is negative"));
        }
        if !dir.has(&files(size, dir).0) {
            return Err(invalid(PAGE_SIZE, format!("{size:?}"), "is not a huge page size of this host"));
        }
    }
    Ok(())
}

/// Writes the page fault limit and, where the kernel has them (5.7+), the reservation limit
/// too: OCI asks for reservation limits where supported, and runc writes both.
pub fn apply(limits: &[LinuxHugepageLimit], dir: Dir) -> Result<(), CgroupError> {
    for limit in limits {
        let (fault_file, reservation_file) = files(limit.page_size(), dir);
        let value = limit.limit().to_string();
        set(dir.path(), &fault_file, &value, LIMIT)?;
        if dir.has(&reservation_file) {
            set(dir.path(), &reservation_file, &value, LIMIT)?;
        }
    }
    Ok(())
}

/// The (page fault, reservation) limit files for a page size.
fn files(size: &str, dir: Dir) -> (String, String) {
    if dir.is_v2() {
        (format!("hugetlb.{size}.max"), format!("hugetlb.{size}.rsvd.max"))
    } else {
        (format!("hugetlb.{size}.limit_in_bytes"), format!("hugetlb.{size}.rsvd.limit_in_bytes"))
    }
}

fn is_page_size(size: &str) -> bool {
    let number = ["KB", "MB", "GB"].iter().find_map(|unit| size.strip_suffix(unit));
    number.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxHugepageLimitBuilder;
    use std::fs::{read_to_string, write};

    fn limit(size: &str, bytes: i64) -> LinuxHugepageLimit {
        LinuxHugepageLimitBuilder::default().page_size(size).limit(bytes).build().unwrap()
    }

    #[test]
    fn v1_and_v2_files_with_reservations_where_present() {
        let tmp = tempfile::tempdir().unwrap();
        let files = ["hugetlb.2MB.limit_in_bytes", "hugetlb.2MB.rsvd.limit_in_bytes", "hugetlb.1GB.max"];
        for file in files {
            write(tmp.path().join(file), "").unwrap();
        }
        let v1 = [limit("2MB", 4 << 20)];
        validate(&v1, Dir::V1(tmp.path())).unwrap();
        apply(&v1, Dir::V1(tmp.path())).unwrap();
        let v2 = [limit("1GB", 1 << 30)];
        validate(&v2, Dir::V2(tmp.path())).unwrap();
        apply(&v2, Dir::V2(tmp.path())).unwrap();
        let read = |file: &str| read_to_string(tmp.path().join(file)).unwrap();
        assert_eq!(read(files[0]), "4194304\n");
        assert_eq!(read(files[1]), "4194304\n");
        assert_eq!(read(files[2]), "1073741824\n");
        assert!(!tmp.path().join("hugetlb.1GB.rsvd.max").exists());
    }

    #[test]
    fn bad_sizes_and_limits_name_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("hugetlb.2MB.max"), "").unwrap();
        let dir = Dir::V2(tmp.path());
        let cases = [
            (limit("2M", 0), "linux.resources.hugepageLimits.pageSize: \"2M\" is not a page size"),
            (limit("MB", 0), "linux.resources.hugepageLimits.pageSize: \"MB\""),
            (limit("2MB", -1), "linux.resources.hugepageLimits.limit: -1 (pageSize 2MB) is negative"),
            (
                limit("16GB", 0),
                "linux.resources.hugepageLimits.pageSize: \"16GB\" is not a huge page size of this host",
            ),
        ];
        for (bad, expected) in cases {
            let err = validate(&[bad], dir).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} / {expected}");
        }
    }
}
