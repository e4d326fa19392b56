//! The rule for tests that need a real program (node, npm, php, redis-server, redis-sentinel,
//! redis-cli, dnsmasq, chromium, curl, the packaging tools): no test passes without testing.
//! The harness installs what it can itself (`npm ci` from the lock files in
//! `tests/backends/<app>/`); a program it cannot install fails the test with the line that
//! installs it, unless the developer opts out with [`ALLOW_MISSING`]`=1`, which CI never sets.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// The opt-out: with `STICKYD_TEST_ALLOW_MISSING=1` a test whose real program is missing prints
/// one line naming this variable and the program, and returns without running its body. Any
/// other value, or none, fails the test. CI never sets it. `npm ci` failing is never excused.
pub const ALLOW_MISSING: &str = "STICKYD_TEST_ALLOW_MISSING";

/// A real program a test needs that is not on PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingProgram {
    /// The command name, as the test runs it: `php`.
    pub program: String,
    /// The command that installs it on Debian: `apt-get install php-cli`, or
    /// `cargo install cargo-deb --locked` for a cargo tool.
    pub install: &'static str,
}

impl MissingProgram {
    /// `program` is missing; its install line comes from [`install_line`].
    pub fn new(program: &str) -> MissingProgram {
        MissingProgram {
            program: program.to_owned(),
            install: install_line(program),
        }
    }
}

/// The command that installs `program` on Debian. Panics for a program not listed here, so a
/// test that starts a new program has to say how to install it.
pub fn install_line(program: &str) -> &'static str {
    match program {
        "node" | "npm" => "apt-get install nodejs npm",
        "php" => "apt-get install php-cli",
        "redis-server" => "apt-get install redis-server",
        "redis-sentinel" => "apt-get install redis-sentinel",
        "redis-cli" => "apt-get install redis-tools",
        "curl" => "apt-get install curl",
        "cargo-deb" => "cargo install cargo-deb --locked",
        "dpkg" | "dpkg-deb" => "apt-get install dpkg",
        "dpkg-shlibdeps" => "apt-get install dpkg-dev",
        "adduser" => "apt-get install adduser",
        "chromium" | "chromedriver" => "apt-get install chromium chromium-driver",
        "dnsmasq" => "apt-get install dnsmasq-base",
        other => panic!(
            "no install line for {other:?}: add one to install_line in tests/common/real_programs.rs"
        ),
    }
}

/// Ok when `program` is an executable file in a PATH directory, else what is missing and how to
/// install it.
pub fn find_program(program: &str) -> Result<(), MissingProgram> {
    let install = MissingProgram::new(program); // panics early for a program with no install line
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found { Ok(()) } else { Err(install) }
}

/// Whether a test may run, from what a lookup found and the value of [`ALLOW_MISSING`]
/// (`None` when unset). A pure function of its arguments, so the rule is tested without touching
/// the environment of parallel tests.
///
/// - found: true, the test runs;
/// - missing, opt-out not `1`: panics with the program and its install line;
/// - missing, opt-out `1`: prints [`opted_out_line`] and returns false; the caller returns
///   without running its body.
pub fn may_run(lookup: Result<(), MissingProgram>, allow_missing: Option<&OsStr>) -> bool {
    let Err(missing) = lookup else {
        return true;
    };
    if allow_missing != Some(OsStr::new("1")) {
        panic!(
            "{} is not installed (not found on PATH). Install it: `{}` (Debian). \
             A developer without it can set {ALLOW_MISSING}=1 so the tests that need it return \
             early; CI never does.",
            missing.program, missing.install
        );
    }
    println!("{}", opted_out_line(&missing));
    false
}

/// The one line a test prints when [`ALLOW_MISSING`] lets it return early.
pub fn opted_out_line(missing: &MissingProgram) -> String {
    format!(
        "{ALLOW_MISSING}=1: {} is not installed, so this test returned without running \
         (install it: `{}`)",
        missing.program, missing.install
    )
}

/// True when `program` is on PATH; otherwise the rule of [`may_run`] with this process's
/// [`ALLOW_MISSING`]: a panic with the install line, or with the opt-out a printed line and false.
pub fn require_program(program: &str) -> bool {
    may_run(
        find_program(program),
        std::env::var_os(ALLOW_MISSING).as_deref(),
    )
}

/// Whether a test that must run as root may run, by the rule of [`may_run`]: true when `euid`
/// (the effective user id) is 0; otherwise a panic saying what needs root, or under
/// [`ALLOW_MISSING`]`=1` one printed line and false. Pure, like [`may_run`].
pub fn may_run_as(euid: u32, needs_root_for: &str, allow_missing: Option<&OsStr>) -> bool {
    if euid == 0 {
        return true;
    }
    if allow_missing != Some(OsStr::new("1")) {
        panic!(
            "this test needs root (uid 0, not {euid}) for {needs_root_for}. Run it as root, \
             e.g. in a throwaway container or VM. A developer who cannot can set \
             {ALLOW_MISSING}=1 so it returns early; CI never does."
        );
    }
    println!(
        "{ALLOW_MISSING}=1: not root (uid {euid}), so this test returned without running \
         (it needs root for {needs_root_for})"
    );
    false
}

/// True when this process runs as root (`id -u` prints 0); otherwise the rule of
/// [`may_run_as`] with this process's [`ALLOW_MISSING`].
pub fn require_root(needs_root_for: &str) -> bool {
    let output = Command::new("id")
        .arg("-u")
        .output()
        .expect("cannot run `id -u`");
    let euid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("`id -u` prints a number");
    may_run_as(
        euid,
        needs_root_for,
        std::env::var_os(ALLOW_MISSING).as_deref(),
    )
}

// ---------------------------------------------------------------------------------------------
// npm packages of the apps in tests/backends/
// ---------------------------------------------------------------------------------------------

/// What making an app's `node_modules` match its lock file came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NpmInstall {
    /// Every package of `package-lock.json` is installed (already, or by `npm ci` just now).
    Complete,
    /// Packages are missing and there is no npm to install them.
    NpmMissing(MissingProgram),
    /// `npm ci` failed or left packages missing: the install line and npm's output.
    Failed(String),
}

/// True when `app/node_modules` holds every package `app/package-lock.json` lists, after running
/// `npm ci --prefix <app> --no-audit --no-fund` itself when it did not. At most one `npm ci` per
/// app at a time, across the threads of this process and across test processes (see
/// [`ensure_npm_packages`]). Without npm: the rule of [`require_program`]. A failing `npm ci`
/// fails the test with its install line and npm's output, opt-out or not.
pub fn require_npm_packages(app: &Path) -> bool {
    match ensure_npm_packages_once(app) {
        NpmInstall::Complete => true,
        NpmInstall::NpmMissing(missing) => {
            may_run(Err(missing), std::env::var_os(ALLOW_MISSING).as_deref())
        }
        NpmInstall::Failed(report) => panic!("{report}"),
    }
}

/// [`ensure_npm_packages`] with the real `npm`, once per app in this process: the first test to
/// ask installs, the others of this binary wait for it and share its outcome.
fn ensure_npm_packages_once(app: &Path) -> NpmInstall {
    static APPS: Mutex<BTreeMap<PathBuf, Arc<OnceLock<NpmInstall>>>> = Mutex::new(BTreeMap::new());
    let once = Arc::clone(
        APPS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(app.to_path_buf())
            .or_default(),
    );
    once.get_or_init(|| ensure_npm_packages(app, OsStr::new("npm")))
        .clone()
}

/// Makes `app/node_modules` match `app/package-lock.json`, running `npm ci` with the program
/// `npm` (`"npm"` from PATH; the harness's own tests pass a stand-in) when packages are missing.
/// Holds an exclusive lock on `app/.npm-ci.lock` while it checks and installs, so separate test
/// processes never run `npm ci` on one app at once, and a process that waited sees the packages
/// another installed instead of installing them again.
pub fn ensure_npm_packages(app: &Path, npm: &OsStr) -> NpmInstall {
    let install = npm_ci_line(app);
    let lock_path = app.join(".npm-ci.lock");
    let lock = match File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    {
        Ok(file) => file,
        Err(e) => {
            return NpmInstall::Failed(format!("cannot open {}: {e}", lock_path.display()));
        }
    };
    if let Err(e) = lock_exclusive(&lock) {
        return NpmInstall::Failed(format!("cannot lock {}: {e}", lock_path.display()));
    }
    // The lock is released when `lock` drops, at the end of this function.
    let missing = match missing_npm_packages(app) {
        Ok(missing) if missing.is_empty() => return NpmInstall::Complete,
        Ok(missing) => missing,
        Err(e) => return NpmInstall::Failed(e),
    };
    println!(
        "{} lacks {} package(s) of its lock file ({}...): running `{install}`",
        prefix_arg(app).join("node_modules").display(),
        missing.len(),
        missing[0]
    );
    let output = match Command::new(npm)
        .args(["ci", "--prefix"])
        .arg(prefix_arg(app))
        .args(["--no-audit", "--no-fund"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return NpmInstall::NpmMissing(MissingProgram::new("npm"));
        }
        Err(e) => return NpmInstall::Failed(format!("`{install}` could not start: {e}")),
    };
    let npm_said = format!(
        "npm's stdout:\n{}\nnpm's stderr:\n{}",
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    if !output.status.success() {
        return NpmInstall::Failed(format!(
            "`{install}` failed ({}).\n{npm_said}",
            output.status
        ));
    }
    match missing_npm_packages(app) {
        Ok(missing) if missing.is_empty() => NpmInstall::Complete,
        Ok(missing) => NpmInstall::Failed(format!(
            "`{install}` succeeded but {} still lacks {}.\n{npm_said}",
            prefix_arg(app).join("node_modules").display(),
            missing.join(", ")
        )),
        Err(e) => NpmInstall::Failed(e),
    }
}

/// Blocks until this process holds the exclusive lock on `file` (`flock` on Linux), released
/// when `file` is closed.
// `File::lock` is Rust 1.89: the tests need it, the daemon keeps its lower rust-version.
#[allow(clippy::incompatible_msrv)]
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    file.lock()
}

/// The packages `app/package-lock.json` lists (its `packages` keys, `node_modules/...`) that are
/// absent from `app`, or installed at another version. Optional packages (platform-specific
/// builds) may be absent. Err when the lock file cannot be read.
pub fn missing_npm_packages(app: &Path) -> Result<Vec<String>, String> {
    let lock_path = app.join("package-lock.json");
    let lock: serde_json::Value = std::fs::read_to_string(&lock_path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot read {}: {e}", lock_path.display()))?;
    let Some(packages) = lock["packages"].as_object() else {
        return Err(format!(
            "{} has no \"packages\" (lockfileVersion 2 or later, written by npm 7+, has them)",
            lock_path.display()
        ));
    };
    let missing = packages
        .iter()
        .filter(|(path, entry)| !path.is_empty() && entry["optional"] != true)
        .filter(|(path, entry)| {
            let manifest = std::fs::read_to_string(app.join(path).join("package.json"))
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
            manifest.is_none_or(|manifest| manifest["version"] != entry["version"])
        })
        .map(|(path, _)| path.clone())
        .collect();
    Ok(missing)
}

/// `npm ci --prefix tests/backends/<app> --no-audit --no-fund`: what the harness runs, as a
/// developer would type it at the repository root.
pub fn npm_ci_line(app: &Path) -> String {
    format!(
        "npm ci --prefix {} --no-audit --no-fund",
        prefix_arg(app).display()
    )
}

/// `app` relative to the repository root when it is inside it, else as given.
fn prefix_arg(app: &Path) -> &Path {
    app.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(app)
}
