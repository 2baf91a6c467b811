//! `warren completion SHELL` and `warren man DIR`: shell completions and man pages generated
//! from the command line's own definition (clap), so they never drift from it.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

pub fn completion(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut cmd, "warren", &mut std::io::stdout());
    Ok(0)
}

/// One page per verb and sub-verb: warren.1, warren-tenant.1, warren-tenant-create.1, ...
pub fn man(dir: &Path) -> Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut cmd = crate::cli::Cli::command();
    cmd.build();
    let n = write_pages(dir, &cmd, "warren")?;
    println!("{n} pages in {}", dir.display());
    Ok(0)
}

fn write_pages(dir: &Path, cmd: &clap::Command, name: &str) -> Result<usize> {
    let page = cmd.clone().display_name(name.to_string());
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text).with_context(|| path.display().to_string())?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        n += write_pages(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(n)
}
