//! The Debian package, built the way README.md says (`scripts/package-deb`): what it holds
//! (the binary, the unit, the config as a conffile, the man page, the completions, the docs,
//! its Depends), and, installed for real with `dpkg -i` as root, what an operator finds: the
//! `stickyd` system user, a `/usr/bin/stickyd` that checks the shipped config as that user, a
//! man page, an edited config kept across a reinstall, and a purge that leaves no trace of the
//! package but the user (as Debian keeps system users).
//!
//! The package is built once per test process, with `CARGO_TARGET_DIR` under this test's own
//! target dir (`CARGO_TARGET_TMPDIR/package`), so the release build never waits on the lock
//! of the `cargo test` that runs this file. Every command runs under `timeout`, which kills
//! its whole process group (cargo and rustc included) when the limit is over.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// `scripts/package-deb` compiles stickyd in release mode from nothing (thin LTO, one codegen
/// unit): about 3 minutes on 2 cores, 20 allowed.
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Any other command: `dpkg -i`, `dpkg --purge`, `dpkg-deb`, stickyd itself.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// The unit's enablement, as `systemctl enable stickyd` makes it (`WantedBy=multi-user.target`).
const ENABLE_LINK: &str = "/etc/systemd/system/multi-user.target.wants/stickyd.service";

/// Runs `program args` under `timeout` in the repository root, with `envs` added, and returns
/// its output. Panics when it cannot start or takes longer than `limit`.
fn run(limit: Duration, program: &str, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=10s")
        .arg(format!("{}s", limit.as_secs()))
        .arg(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot start `{program}`: {e}"));
    // timeout(1) exits 124 when the limit was over, 137 when it had to kill.
    if matches!(output.status.code(), Some(124 | 137)) {
        panic!(
            "`{program} {}` took longer than {limit:?}.\n{}",
            args.join(" "),
            said(&output)
        );
    }
    output
}

/// Like [`run`], and panics unless the command succeeded.
fn run_ok(limit: Duration, program: &str, args: &[&str]) -> String {
    let output = run(limit, program, args, &[]);
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}).\n{}",
        args.join(" "),
        output.status,
        said(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's stdout and stderr, for a failure message.
fn said(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

/// True when the programs building and reading the package are installed; otherwise the rule
/// of [`common::require_program`].
fn packaging_tools_installed() -> bool {
    ["cargo-deb", "dpkg-deb", "dpkg-shlibdeps"]
        .iter()
        .all(|program| common::require_program(program))
}

/// The .deb `scripts/package-deb` built, built at most once per test process; the tests of
/// this file that need it wait for the first one to build it and share its outcome.
fn package() -> &'static Path {
    static PACKAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = PACKAGE.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        let output = run(
            BUILD_LIMIT,
            "scripts/package-deb",
            &[],
            &[("CARGO_TARGET_DIR", &target)],
        );
        if !output.status.success() {
            return Err(format!(
                "scripts/package-deb failed ({}).\n{}",
                output.status,
                said(&output)
            ));
        }
        // The script's last line of stdout is the path of the .deb.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        if deb.extension().is_some_and(|extension| extension == "deb") && deb.is_file() {
            Ok(deb)
        } else {
            Err(format!(
                "scripts/package-deb printed no .deb path last.\n{}",
                said(&output)
            ))
        }
    });
    match built {
        Ok(deb) => deb,
        Err(report) => panic!("{report}"),
    }
}

/// `path` inside the package or on this machine, as text; a man page is gunzipped first.
fn text_of(path: &Path) -> String {
    let path = path.to_str().expect("UTF-8 path");
    if path.ends_with(".gz") {
        run_ok(COMMAND_LIMIT, "gzip", &["-dc", path])
    } else {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }
}

/// Each file the package installs, with the mode it gets.
const FILES: [(&str, &str); 11] = [
    ("/usr/bin/stickyd", "-rwxr-xr-x"),
    ("/lib/systemd/system/stickyd.service", "-rw-r--r--"),
    ("/etc/stickyd/stickyd.toml", "-rw-r--r--"),
    ("/usr/share/man/man1/stickyd.1.gz", "-rw-r--r--"),
    ("/usr/share/man/man1/stickyd-check.1.gz", "-rw-r--r--"),
    (
        "/usr/share/bash-completion/completions/stickyd",
        "-rw-r--r--",
    ),
    ("/usr/share/zsh/vendor-completions/_stickyd", "-rw-r--r--"),
    (
        "/usr/share/fish/vendor_completions.d/stickyd.fish",
        "-rw-r--r--",
    ),
    ("/usr/share/doc/stickyd/README.md", "-rw-r--r--"),
    ("/usr/share/doc/stickyd/LICENSE", "-rw-r--r--"),
    ("/usr/share/doc/stickyd/copyright", "-rw-r--r--"),
];

#[test]
fn the_package_holds_the_binary_unit_conffile_man_page_completions_and_docs() {
    if !packaging_tools_installed() {
        return;
    }
    let deb = package();
    let deb_arg = deb.to_str().expect("UTF-8 path");

    // `dpkg-deb --contents`: `-rwxr-xr-x 0/0 7967664 2026-12-03 00:00 ./usr/bin/stickyd`.
    let contents = run_ok(COMMAND_LIMIT, "dpkg-deb", &["--contents", deb_arg]);
    let listed: Vec<(&str, &str, &str)> = contents
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.last()?.strip_prefix('.')?;
            Some((fields[0], fields[1], path))
        })
        .collect();
    for (path, mode) in FILES {
        assert!(
            listed.contains(&(mode, "0/0", path)),
            "{path} ({mode}, root) missing from the package:\n{contents}"
        );
    }

    let field = |name: &str| run_ok(COMMAND_LIMIT, "dpkg-deb", &["-f", deb_arg, name]);
    assert_eq!(field("Package").trim(), "stickyd");
    assert_eq!(
        field("Version").trim(),
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    let depends = field("Depends");
    assert!(depends.contains("adduser"), "Depends: {depends}");
    assert!(depends.contains("libc6"), "Depends: {depends}");
    // apt shows the first line as the package's one-line summary.
    let description = field("Description");
    let summary = description.lines().next().unwrap_or_default();
    assert!(
        summary.len() < 80 && summary.contains("load balancer"),
        "{description}"
    );

    // The control archive: the conffile, and the maintainer scripts, executable.
    let control = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-control");
    let _ = std::fs::remove_dir_all(&control);
    run_ok(
        COMMAND_LIMIT,
        "dpkg-deb",
        &["--control", deb_arg, control.to_str().unwrap()],
    );
    assert_eq!(
        text_of(&control.join("conffiles")).trim(),
        "/etc/stickyd/stickyd.toml"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let text = text_of(&control.join(script));
        assert!(text.starts_with("#!/bin/sh\n"), "{script}:\n{text}");
        assert!(text.contains("\nset -e\n"), "{script}:\n{text}");
    }
    let postinst = text_of(&control.join("postinst"));
    assert!(
        postinst.contains("adduser --system --group --no-create-home --home /nonexistent stickyd"),
        "{postinst}"
    );
    let commands: Vec<&str> = postinst
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .collect();
    assert!(
        commands.iter().all(|line| {
            !["enable", "start", "restart", "reload-or-restart"]
                .iter()
                .any(|verb| line.contains(&format!("systemctl {verb} ")))
        }),
        "postinst must neither enable nor start the unit:\n{postinst}"
    );

    // The files themselves, unpacked.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-files");
    let _ = std::fs::remove_dir_all(&root);
    run_ok(
        COMMAND_LIMIT,
        "dpkg-deb",
        &["--extract", deb_arg, root.to_str().unwrap()],
    );
    let unit = text_of(&root.join("lib/systemd/system/stickyd.service"));
    for line in [
        "ExecStartPre=/usr/bin/stickyd check --config /etc/stickyd/stickyd.toml",
        "ExecStart=/usr/bin/stickyd --config /etc/stickyd/stickyd.toml",
        "ExecReload=/usr/bin/stickyd check --config /etc/stickyd/stickyd.toml",
        "User=stickyd",
        "Group=stickyd",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert!(!unit.contains("DynamicUser=yes"), "{unit}");
    assert_eq!(
        text_of(&root.join("etc/stickyd/stickyd.toml")),
        text_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/stickyd.toml"))
    );
    let page = text_of(&root.join("usr/share/man/man1/stickyd.1.gz"));
    assert!(page.contains(".TH stickyd 1 "), "{page}");
    let check = text_of(&root.join("usr/share/man/man1/stickyd-check.1.gz"));
    assert!(check.contains("Validate the config file"), "{check}");
    let bash = text_of(&root.join("usr/share/bash-completion/completions/stickyd"));
    assert!(bash.contains("complete -F _stickyd"), "{bash}");
    let zsh = text_of(&root.join("usr/share/zsh/vendor-completions/_stickyd"));
    assert!(zsh.starts_with("#compdef stickyd"), "{zsh}");
    let fish = text_of(&root.join("usr/share/fish/vendor_completions.d/stickyd.fish"));
    assert!(fish.contains("complete -c stickyd"), "{fish}");
}

/// Leaves the machine as the test found it, even after a failed assert: purges the package,
/// removes the enable link the test made, and the stickyd user and group when the test's
/// install created them.
struct Cleanup {
    remove_user: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let purge = run(COMMAND_LIMIT, "dpkg", &["--purge", "stickyd"], &[]);
        if !purge.status.success() {
            eprintln!("cleanup: dpkg --purge stickyd failed.\n{}", said(&purge));
        }
        let _ = std::fs::remove_file(ENABLE_LINK);
        if self.remove_user {
            for (program, name) in [("deluser", "stickyd"), ("delgroup", "stickyd")] {
                let output = run(COMMAND_LIMIT, program, &["--system", name], &[]);
                if !output.status.success() {
                    eprintln!(
                        "cleanup: {program} --system {name} failed.\n{}",
                        said(&output)
                    );
                }
            }
        }
    }
}

/// `getent passwd stickyd`, split at `:`, or None.
fn stickyd_user() -> Option<Vec<String>> {
    let output = run(COMMAND_LIMIT, "getent", &["passwd", "stickyd"], &[]);
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .split(':')
            .map(str::to_owned)
            .collect()
    })
}

#[test]
fn installing_the_package_creates_the_system_user_and_a_stickyd_that_checks_its_config() {
    if !common::require_root("`dpkg -i` and `dpkg --purge` of the stickyd package")
        || !packaging_tools_installed()
        || !common::require_program("dpkg")
        || !common::require_program("adduser")
    {
        return;
    }
    let deb = package();
    let deb_arg = deb.to_str().expect("UTF-8 path");

    // A package left by an earlier run that failed before its cleanup goes first.
    run_ok(COMMAND_LIMIT, "dpkg", &["--purge", "stickyd"]);
    let user_before = stickyd_user();
    let _cleanup = Cleanup {
        remove_user: user_before.is_none(),
    };

    run_ok(COMMAND_LIMIT, "dpkg", &["--install", deb_arg]);
    let status = run_ok(
        COMMAND_LIMIT,
        "dpkg-query",
        &["--show", "--showformat=${Status}", "stickyd"],
    );
    assert_eq!(status, "install ok installed");

    // The user the unit runs as: a system user and group, no home, no login.
    let user = stickyd_user().expect("postinst created no stickyd user");
    let uid: u32 = user[2].parse().unwrap();
    assert!(
        uid < 1000,
        "stickyd has uid {uid}, not a system uid: {user:?}"
    );
    assert!(
        user[6].ends_with("/nologin") || user[6].ends_with("/false"),
        "stickyd can log in: {user:?}"
    );
    assert_eq!(user[5], "/nonexistent", "{user:?}");
    let group = run_ok(COMMAND_LIMIT, "getent", &["group", "stickyd"]);
    assert_eq!(
        group.split(':').nth(2),
        Some(user[3].as_str()),
        "the stickyd group is not stickyd's primary group: {group}"
    );
    if let Some(before) = &user_before {
        assert_eq!(&user, before, "postinst changed the existing stickyd user");
        println!("the stickyd user existed before the install: postinst kept it as it was");
    }

    for (path, _) in FILES {
        assert!(Path::new(path).is_file(), "{path} is not installed");
    }
    let version = run_ok(COMMAND_LIMIT, "/usr/bin/stickyd", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("stickyd {}", env!("CARGO_PKG_VERSION"))
    );
    // As the unit's ExecStartPre runs it: as the stickyd user.
    let check = |what: &str| {
        let checked = run_ok(
            COMMAND_LIMIT,
            "runuser",
            &[
                "-u",
                "stickyd",
                "--",
                "/usr/bin/stickyd",
                "check",
                "--config",
                "/etc/stickyd/stickyd.toml",
            ],
        );
        assert!(
            checked
                .lines()
                .last()
                .unwrap_or_default()
                .starts_with("reload (SIGHUP)"),
            "{what}:\n{checked}"
        );
    };
    check("the shipped config");
    let page = text_of(Path::new("/usr/share/man/man1/stickyd.1.gz"));
    assert!(page.contains(".TH stickyd 1 "), "{page}");
    let conffiles = run_ok(
        COMMAND_LIMIT,
        "dpkg-query",
        &["--show", "--showformat=${Conffiles}", "stickyd"],
    );
    assert!(
        conffiles.contains("/etc/stickyd/stickyd.toml"),
        "{conffiles}"
    );

    // The operator edits the config; a reinstall (an upgrade runs the same scripts) keeps the
    // edit and the user.
    let edited = format!(
        "{}\n# edited by tests/package.rs\n",
        text_of(Path::new("/etc/stickyd/stickyd.toml"))
    );
    std::fs::write("/etc/stickyd/stickyd.toml", &edited).unwrap();
    run_ok(COMMAND_LIMIT, "dpkg", &["--install", deb_arg]);
    assert_eq!(text_of(Path::new("/etc/stickyd/stickyd.toml")), edited);
    assert_eq!(stickyd_user().as_ref(), Some(&user));
    check("the edited config, after a reinstall");

    // The operator enabled the unit; purge takes the package, its conffile and that link, and
    // keeps the system user.
    std::fs::create_dir_all(Path::new(ENABLE_LINK).parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/lib/systemd/system/stickyd.service", ENABLE_LINK).unwrap();
    run_ok(COMMAND_LIMIT, "dpkg", &["--purge", "stickyd"]);
    for (path, _) in FILES {
        assert!(!Path::new(path).exists(), "{path} is left after purge");
    }
    assert!(
        std::fs::symlink_metadata(ENABLE_LINK).is_err(),
        "{ENABLE_LINK} is left after purge"
    );
    assert_eq!(
        stickyd_user().as_ref(),
        Some(&user),
        "purge removed the system user"
    );
}
