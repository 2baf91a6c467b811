//! The plans a host offers: the built-in ones, plus (or replaced by) an operator's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{toml_file, ConfigError, Plan};

/// Where an operator's plans live when neither a directory nor [`PLANS_DIR_ENV`] is given.
pub const DEFAULT_PLANS_DIR: &str = "/etc/warren/plans";
/// The environment variable that names the operator's plans directory.
pub const PLANS_DIR_ENV: &str = "WARREN_PLANS_DIR";

/// config/plans/*.toml, embedded so that the binary needs no files installed.
const BUILTIN: [(&str, &str); 4] = [
    ("nano", include_str!("../plans/nano.toml")),
    ("small", include_str!("../plans/small.toml")),
    ("medium", include_str!("../plans/medium.toml")),
    ("large", include_str!("../plans/large.toml")),
];

/// Plans by name.
#[derive(Clone, Debug)]
pub struct Catalog {
    plans: BTreeMap<String, Plan>,
}

impl Catalog {
    /// The built-in plans only.
    pub fn builtin() -> Result<Catalog, ConfigError> {
        let mut plans = BTreeMap::new();
        for (name, text) in BUILTIN {
            plans.insert(name.to_string(), Plan::parse(name, text, &format!("built-in plans/{name}.toml"))?);
        }
        Ok(Catalog { plans })
    }

    /// Adds every `*.toml` file of `dir` (other files are left alone), each a plan named after
    /// the file; one with a built-in plan's name replaces it. Any bad file fails the whole load:
    /// a plan that silently went missing would be worse.
    pub fn with_dir(mut self, dir: &Path) -> Result<Catalog, ConfigError> {
        let read_error = |error| ConfigError::Read { path: dir.to_path_buf(), error };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let name = plan_name(&path).ok_or_else(|| ConfigError::PlanName { path: path.clone() })?;
            let plan = Plan::parse(&name, &toml_file::read(&path)?, &path.display().to_string())?;
            self.plans.insert(name, plan);
        }
        Ok(self)
    }

    /// The built-in plans plus a directory: `explicit` if given, else $WARREN_PLANS_DIR if set
    /// (both must exist), else /etc/warren/plans if it exists.
    pub fn discover(explicit: Option<&Path>) -> Result<Catalog, ConfigError> {
        let from_env = std::env::var_os(PLANS_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        let catalog = Catalog::builtin()?;
        match explicit.map(Path::to_path_buf).or(from_env) {
            Some(dir) => catalog.with_dir(&dir),
            None if Path::new(DEFAULT_PLANS_DIR).is_dir() => catalog.with_dir(Path::new(DEFAULT_PLANS_DIR)),
            None => Ok(catalog),
        }
    }

    pub fn get(&self, name: &str) -> Result<&Plan, ConfigError> {
        self.plans.get(name).ok_or_else(|| ConfigError::NoSuchPlan {
            name: name.to_string(),
            known: self.plans.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Every plan, smallest first (by CPUs, then memory, then name).
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        let mut plans: Vec<&Plan> = self.plans.values().collect();
        plans.sort_by(|a, b| a.cpus().total_cmp(&b.cpus()).then(a.memory().cmp(&b.memory())));
        plans.into_iter()
    }
}

/// The file's stem, if it is a plan name: lowercase letters, digits, '-' and '_', starting
/// with a letter or digit (names end up in tables and on command lines).
fn plan_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    let first_ok = stem.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    (first_ok && stem.chars().all(ok)).then(|| stem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const TINY: &str = "[cpu]\ncpus = 0.1\n[memory]\nlimit = \"64MiB\"\n[pids]\nlimit = 32\n";

    #[test]
    fn builtin_plans_grow_in_every_resource() {
        let catalog = Catalog::builtin().unwrap();
        let names: Vec<&str> = catalog.plans().map(Plan::name).collect();
        assert_eq!(names, ["nano", "small", "medium", "large"]);
        let by_size: Vec<&Plan> = catalog.plans().collect();
        for pair in by_size.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(a.cpus() < b.cpus() && a.memory() < b.memory() && a.pids() < b.pids(), "{a:?} {b:?}");
        }
        assert_eq!(catalog.get("small").unwrap().source(), "built-in plans/small.toml");
    }

    #[test]
    fn a_directory_adds_and_overrides() {
        let dir = dir_with(&[("tiny.toml", TINY), ("small.toml", TINY), ("README.md", "not a plan")]);
        let catalog = Catalog::builtin().unwrap().with_dir(dir.path()).unwrap();
        assert_eq!(catalog.plans().count(), 5);
        assert_eq!(catalog.get("tiny").unwrap().cpus(), 0.1);
        let small = catalog.get("small").unwrap();
        assert_eq!(small.memory(), 64 << 20);
        assert_eq!(small.source(), dir.path().join("small.toml").display().to_string());
    }

    #[test]
    fn unknown_names_list_the_plans() {
        let err = Catalog::builtin().unwrap().get("huge").unwrap_err().to_string();
        assert_eq!(err, "no plan named \"huge\" (plans: large, medium, nano, small)");
    }

    #[test]
    fn one_bad_file_fails_the_load() {
        let dir = dir_with(&[("tiny.toml", TINY), ("bad.toml", "[cpu]\ncpus = -1\n")]);
        let err = Catalog::builtin().unwrap().with_dir(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("bad.toml: cpu.cpus: -1 is negative"), "{err}");
        let dir = dir_with(&[("Big Plan.toml", TINY)]);
        let err = Catalog::builtin().unwrap().with_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Big Plan.toml: plan names are lowercase"), "{err}");
        let err = Catalog::builtin().unwrap().with_dir(Path::new("/nonexistent/plans")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/plans: No such file"), "{err}");
    }
}
