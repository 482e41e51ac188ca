//! Where the test bed's browser is: Debian's `chromium` and its WebDriver server
//! `chromedriver` (package `chromium-driver`), which `make testbed` installs and names
//! in `testbed.env` as `CHROMIUM` and `CHROMEDRIVER`.

use std::path::PathBuf;

use anyhow::bail;

/// The headless browser the dashboard's tests drive.
pub fn chromium() -> anyhow::Result<PathBuf> {
    locate("CHROMIUM", "chromium", "chromium")
}

/// The WebDriver server that drives [`chromium`].
pub fn chromedriver() -> anyhow::Result<PathBuf> {
    locate("CHROMEDRIVER", "chromedriver", "chromium-driver")
}

/// `$<key>` if set, else what `testbed.env` names, else `program` on `PATH`.
fn locate(key: &str, program: &str, package: &str) -> anyhow::Result<PathBuf> {
    let from_env = std::env::var_os(key).map(PathBuf::from);
    let from_testbed = || {
        let env = std::fs::read_to_string(crate::testbed_dir().join("testbed.env")).ok()?;
        env.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .filter(|value| !value.trim().is_empty())
            .map(|value| PathBuf::from(value.trim()))
    };
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    };
    match from_env.or_else(from_testbed).or_else(on_path) {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => bail!(
            "{key} names {}, which does not exist: run `make testbed` (it installs Debian's {package} package)",
            path.display()
        ),
        None => bail!(
            "{program} is not installed: run `make testbed` (it installs Debian's {package} package)"
        ),
    }
}
