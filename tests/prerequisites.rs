//! The harness's rule for tests that need a real program: no test passes without testing. A
//! missing program fails the test with its install line unless `STICKYD_TEST_ALLOW_MISSING=1`;
//! npm packages are installed by the harness from the lock file, one `npm ci` per app at a time.
//! The rule is checked here through its pure parts, never by changing this process's environment.

mod common;

use common::{MissingProgram, NpmInstall, ensure_npm_packages, may_run, missing_npm_packages};

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// A missing program
// ---------------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "`apt-get install php-cli`")]
fn a_missing_program_without_the_opt_out_fails_with_its_install_line() {
    may_run(Err(MissingProgram::new("php")), None);
}

#[test]
fn an_opt_out_other_than_1_does_not_excuse_a_missing_program() {
    for value in ["", "0", "true"] {
        let outcome = std::panic::catch_unwind(|| {
            may_run(
                Err(MissingProgram::new("redis-server")),
                Some(OsStr::new(value)),
            )
        });
        let message = outcome.expect_err(&format!("STICKYD_TEST_ALLOW_MISSING={value:?} excused"));
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(
            message.contains("`apt-get install redis-server`"),
            "{message}"
        );
    }
}

#[test]
fn with_the_opt_out_a_missing_program_does_not_run_the_test_body() {
    let mut body_ran = false;
    if may_run(Err(MissingProgram::new("node")), Some(OsStr::new("1"))) {
        body_ran = true;
    }
    assert!(!body_ran, "the body ran although node is missing");
}

#[test]
fn the_opted_out_line_names_the_variable_the_program_and_its_install_line() {
    let line = common::opted_out_line(&MissingProgram::new("curl"));
    assert!(
        line.starts_with("STICKYD_TEST_ALLOW_MISSING=1: curl "),
        "{line}"
    );
    assert!(line.contains("`apt-get install curl`"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn a_program_on_path_runs_the_test_with_or_without_the_opt_out() {
    assert!(may_run(Ok(()), None));
    assert!(may_run(Ok(()), Some(OsStr::new("1"))));
}

#[test]
fn every_program_the_tests_start_has_its_debian_install_line() {
    for (program, install) in [
        ("node", "apt-get install nodejs npm"),
        ("npm", "apt-get install nodejs npm"),
        ("php", "apt-get install php-cli"),
        ("redis-server", "apt-get install redis-server"),
        ("redis-sentinel", "apt-get install redis-sentinel"),
        ("redis-cli", "apt-get install redis-tools"),
        ("curl", "apt-get install curl"),
        ("chromium", "apt-get install chromium chromium-driver"),
        ("chromedriver", "apt-get install chromium chromium-driver"),
        ("dnsmasq", "apt-get install dnsmasq-base"),
        ("cargo-deb", "cargo install cargo-deb --locked"),
        ("dpkg", "apt-get install dpkg"),
        ("dpkg-deb", "apt-get install dpkg"),
        ("dpkg-shlibdeps", "apt-get install dpkg-dev"),
        ("adduser", "apt-get install adduser"),
    ] {
        assert_eq!(common::install_line(program), install, "{program}");
    }
}

#[test]
#[should_panic(expected = "needs root (uid 0, not 1000) for `dpkg -i`")]
fn a_test_that_needs_root_fails_for_another_user_without_the_opt_out() {
    common::may_run_as(1000, "`dpkg -i`", Some(OsStr::new("true")));
}

#[test]
fn a_test_that_needs_root_runs_as_root_and_returns_early_for_another_user_with_the_opt_out() {
    assert!(common::may_run_as(0, "`dpkg -i`", None));
    assert!(!common::may_run_as(
        1000,
        "`dpkg -i`",
        Some(OsStr::new("1"))
    ));
}

#[test]
#[should_panic(expected = "no install line for \"sh\"")]
fn a_program_without_an_install_line_is_a_harness_error_even_when_installed() {
    let _ = common::find_program("sh");
}

// ---------------------------------------------------------------------------------------------
// npm packages
// ---------------------------------------------------------------------------------------------

#[test]
fn packages_absent_or_at_another_version_than_the_lock_file_are_missing() {
    let app = App::new("lock-check");
    std::fs::write(
        app.0.join("package-lock.json"),
        r#"{"lockfileVersion": 3, "packages": {
            "": {"name": "app"},
            "node_modules/a": {"version": "1.0.0"},
            "node_modules/b": {"version": "2.0.0"},
            "node_modules/b/node_modules/c": {"version": "3.0.0"},
            "node_modules/fsevents": {"version": "2.3.3", "optional": true}
        }}"#,
    )
    .unwrap();
    app.install("node_modules/a", "1.0.0");
    app.install("node_modules/b", "1.9.0");
    assert_eq!(
        missing_npm_packages(&app.0).unwrap(),
        ["node_modules/b", "node_modules/b/node_modules/c"]
    );
    app.install("node_modules/b", "2.0.0");
    app.install("node_modules/b/node_modules/c", "3.0.0");
    assert_eq!(missing_npm_packages(&app.0).unwrap(), Vec::<String>::new());
}

#[test]
fn racing_tests_run_npm_ci_once_and_the_others_wait_for_its_packages() {
    let app = App::with_one_package("race");
    // Each thread opens the lock file itself, as separate test processes do.
    let outcomes: Vec<NpmInstall> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| ensure_npm_packages(&app.0, fake_npm())))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(
        outcomes.iter().all(|o| *o == NpmInstall::Complete),
        "{outcomes:?}"
    );
    assert_eq!(
        app.npm_log(),
        "start\nend\n",
        "npm ci ran more than once, or two at a time"
    );
}

#[test]
fn complete_packages_need_no_npm() {
    let app = App::with_one_package("complete");
    app.install("node_modules/a", "1.0.0");
    let no_npm = app.0.join("no-such-npm");
    assert_eq!(
        ensure_npm_packages(&app.0, no_npm.as_os_str()),
        NpmInstall::Complete
    );
}

#[test]
fn missing_packages_without_npm_ask_for_nodejs_npm() {
    let app = App::with_one_package("no-npm");
    let no_npm = app.0.join("no-such-npm");
    assert_eq!(
        ensure_npm_packages(&app.0, no_npm.as_os_str()),
        NpmInstall::NpmMissing(MissingProgram {
            program: "npm".into(),
            install: "apt-get install nodejs npm",
        })
    );
}

#[test]
fn a_failing_npm_ci_reports_its_command_and_npm_output() {
    let app = App::with_one_package("failing");
    std::fs::write(app.0.join("fail"), "").unwrap();
    let NpmInstall::Failed(report) = ensure_npm_packages(&app.0, fake_npm()) else {
        panic!("a failing npm ci was not reported as a failure");
    };
    let command = format!("npm ci --prefix {} --no-audit --no-fund", app.0.display());
    assert!(report.contains(&command), "{report}");
    assert!(report.contains("npm error code EUSAGE"), "{report}");
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A stand-in for `npm ci --prefix DIR --no-audit --no-fund`: logs `start` and `end` to
/// `DIR/log`; fails with an npm-like error when `DIR/fail` exists, else installs package `a`
/// 1.0.0, slowly enough that racing callers would overlap. Written once, before any test spawns
/// it, so no spawn ever meets it still open for writing ("text file busy").
fn fake_npm() -> &'static OsStr {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT
        .get_or_init(|| {
            let path = common::temp_file("fake-npm");
            std::fs::write(
                &path,
                "#!/bin/sh\n\
                 dir=\"$3\"\n\
                 echo start >> \"$dir/log\"\n\
                 if [ -e \"$dir/fail\" ]; then echo 'npm error code EUSAGE' >&2; exit 1; fi\n\
                 sleep 0.3\n\
                 mkdir -p \"$dir/node_modules/a\"\n\
                 echo '{\"version\": \"1.0.0\"}' > \"$dir/node_modules/a/package.json\"\n\
                 echo end >> \"$dir/log\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        })
        .as_os_str()
}

/// A scratch npm app directory, removed when dropped.
struct App(PathBuf);

impl App {
    fn new(name: &str) -> App {
        let dir = common::temp_file(&format!("npm-app-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        App(dir)
    }

    /// An app whose lock file lists one package, `a` 1.0.0.
    fn with_one_package(name: &str) -> App {
        let app = App::new(name);
        std::fs::write(
            app.0.join("package-lock.json"),
            r#"{"lockfileVersion": 3, "packages": {"": {}, "node_modules/a": {"version": "1.0.0"}}}"#,
        )
        .unwrap();
        app
    }

    /// Writes `path/package.json` with `version`, as npm would.
    fn install(&self, path: &str, version: &str) {
        let dir = self.0.join(path);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("package.json"),
            format!("{{\"version\": \"{version}\"}}"),
        )
        .unwrap();
    }

    /// What the fake npm logged.
    fn npm_log(&self) -> String {
        std::fs::read_to_string(self.0.join("log")).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
