//! The workspace's one reader of /proc/PID/mountinfo lines (proc(5)): host defaults follow it
//! to a block device, the runtime to cgroup hierarchies and a checkpoint's mounts.

use std::path::PathBuf;

/// A line that does not have mountinfo's fields.
#[derive(Debug, thiserror::Error)]
#[error("malformed mountinfo line: {line:?}")]
pub struct MalformedLine {
    pub line: String,
}

/// One line of a mountinfo file, unescaped except for the super options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// "MAJOR:MINOR" of the filesystem (st_dev of the files on it), field 3.
    pub device: String,
    /// The directory of the filesystem that is mounted here, field 4.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// What mount(2) was given as the source ("tmpfs", "/dev/vda", ...).
    pub source: String,
    /// The mount's own options (ro, nosuid, ...), field 6.
    pub options: Vec<String>,
    /// The filesystem's options, as the kernel shows them (escapes kept: see [`unescape`]).
    pub super_options: Vec<String>,
}

/// The lines of a mountinfo file (blank lines skipped).
pub fn parse(text: &str) -> Result<Vec<Mount>, MalformedLine> {
    text.lines().filter(|l| !l.trim().is_empty()).map(parse_line).collect()
}

fn parse_line(line: &str) -> Result<Mount, MalformedLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let dash = fields.iter().position(|f| *f == "-");
    let Some(dash) = dash.filter(|&d| d >= 6 && fields.len() >= d + 4) else {
        return Err(MalformedLine { line: line.to_string() });
    };
    Ok(Mount {
        device: fields[2].to_string(),
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        fs_type: fields[dash + 1].to_string(),
        source: unescape(fields[dash + 2]),
        options: fields[5].split(',').map(str::to_string).collect(),
        super_options: fields[dash + 3].split(',').map(str::to_string).collect(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3');
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_an_overlay_line() {
        let text = "\n105 27 0:52 / /run/x\\040y rw,nosuid,relatime shared:7 - overlay overlay \
                    rw,lowerdir=/l,upperdir=/u\\040v,workdir=/w\n";
        let [m] = parse(text).unwrap().try_into().unwrap();
        assert_eq!(m.device, "0:52");
        assert_eq!(m.root, PathBuf::from("/"));
        assert_eq!(m.mount_point, PathBuf::from("/run/x y"));
        assert_eq!((m.fs_type.as_str(), m.source.as_str()), ("overlay", "overlay"));
        assert_eq!(m.options, ["rw", "nosuid", "relatime"]);
        assert_eq!(m.super_options[2], "upperdir=/u\\040v");
        assert_eq!(unescape("/u\\040v\\134\\011"), "/u v\\\t");
    }

    #[test]
    fn a_line_without_the_separator_is_malformed() {
        let err = parse("22 27 0:21 / /proc rw,relatime proc proc rw\n").unwrap_err();
        assert!(err.line.starts_with("22 27"));
        assert!(parse("22 27 0:21 / - proc\n").is_err(), "too few fields before the dash");
    }
}
