//! `stickyd check` and the config loader, as an operator meets them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn check(path: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("stickyd-test-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_config_option_goes_before_or_after_check() {
    let path = write_config(
        "either-order",
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    for args in [["check", "--config"], ["--config", "check"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stickyd"));
        if args[0] == "check" {
            command.args(args).arg(&path);
        } else {
            command.arg(args[0]).arg(&path).arg(args[1]);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success()
                && String::from_utf8_lossy(&output.stdout).contains("service web"),
            "stickyd {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn likely_mistakes_are_warned_about_and_still_load() {
    use std::os::unix::fs::PermissionsExt;
    let token = write_config("world-readable-token", "s3cret\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = write_config(
        "warnings",
        "shutdown_grace = \"0s\"\n[admin]\nbind = \"0.0.0.0:0\"\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nconnect_timeout = \"0s\"\nbalance = \"least-sessions\"\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "warnings do not fail check: {stderr}");
    assert!(stdout.contains("service web"), "{stdout}");
    let origin = path.display();
    for expected in [
        format!("{origin}:1:18: warning: shutdown_grace is zero"),
        format!(
            "{origin}:3:8: warning: the admin listener on 0.0.0.0:0 is reachable beyond this host and asks for no token"
        ),
        format!(
            "{origin}:7:19: warning: connect_timeout is zero: every connection to a backend fails at once"
        ),
        format!(
            "{origin}:4:1: warning: balance = \"least-sessions\" with no affinity has no sessions to count"
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nnot in\n{stderr}");
    }
    let with_token = write_config(
        "warnings-token",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            token.display()
        ),
    );
    let (ok, _, stderr) = check(&with_token);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3:14: warning: admin token file {} is readable by every user (mode 644)",
            with_token.display(),
            token.display()
        )),
        "{stderr}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, _, stderr) = check(&with_token);
    assert!(
        ok && stderr.is_empty(),
        "a private token file is no warning: {stderr}"
    );
}

#[test]
fn secrets_can_come_from_systemd_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let directory =
        std::env::temp_dir().join(format!("stickyd-test-{}-credentials", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let token = directory.join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = write_config(
        "credentials",
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"${CREDENTIALS_DIRECTORY}/admin.token\"\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
    );
    let run = |directory: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stickyd"));
        command.args(["check", "--config"]).arg(&path);
        match directory {
            Some(directory) => command.env("CREDENTIALS_DIRECTORY", directory),
            None => command.env_remove("CREDENTIALS_DIRECTORY"),
        };
        command.output().unwrap()
    };
    let under_systemd = run(Some(&directory));
    assert!(
        under_systemd.status.success() && under_systemd.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&under_systemd.stderr)
    );
    let outside = run(None);
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(!outside.status.success());
    assert!(
        stderr.starts_with(&format!(
            "{}:3:14: \"${{CREDENTIALS_DIRECTORY}}/admin.token\" names $CREDENTIALS_DIRECTORY, which is not set",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_repeated_backend_name_is_reported_once() {
    let path = write_config(
        "repeated-backend",
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    assert_eq!(
        stderr,
        format!(
            "{}:8:8: backend name is used twice in this service: give each backend its own name\n",
            path.display()
        ),
        "the id it defaults to is not a second problem"
    );
}

#[test]
fn check_bind_reports_a_port_in_use_and_plain_check_does_not_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = write_config(
        "bind",
        &format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:{port}\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
        ),
    );
    let (ok, _, stderr) = check(&path);
    assert!(ok, "plain check binds nothing: {stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["check", "--bind", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "check --bind must fail: {stderr}");
    assert!(
        stderr.contains(&format!(
            "service web: cannot bind 127.0.0.1:{port}: Address already in use"
        )) && stderr.contains("another process listens there"),
        "{stderr}"
    );
    drop(taken);
    let output = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["check", "--bind", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_shipped_config_loads() {
    let mut checked = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "toml")
        {
            let (ok, stdout, stderr) = check(&path);
            assert!(ok, "{}: {stderr}", path.display());
            let mut lines: Vec<&str> = stdout.lines().collect();
            assert!(
                lines
                    .pop()
                    .is_some_and(|last| last.starts_with("reload (SIGHUP)")),
                "{stdout}"
            );
            assert!(
                lines.iter().all(|line| line.starts_with("service ")),
                "{stdout}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "config/ holds no .toml file");
}

#[test]
fn check_prints_one_summary_line_per_service_and_the_restart_only_keys() {
    let path = write_config(
        "summary",
        "[[service]]\nname = \"shop\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\nstrategy = \"prefix\"\ncookie = \"JSESSIONID\"\n\
         [[service.backend]]\nname = \"app1\"\naddress = \"127.0.0.1:3001\"\nweight = 3\n\
         [[service]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbalance = \"least-sessions\"\nslow_start = \"90s\"\n[[service.backend]]\nname = \"api1\"\naddress = \"127.0.0.1:3002\"\n",
    );
    let (ok, stdout, _) = check(&path);
    assert!(ok);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("service shop:") && lines[0].contains("prefix cookie JSESSIONID"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("app1 (id app1) 127.0.0.1:3001 weight 3"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("service api:")
            && lines[1].contains("balance least-sessions slow_start 90s; affinity none"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        "reload (SIGHUP) applies every key but threads, pin_threads, [admin] bind: restart for those",
        "check does not name the keys a reload never applies"
    );
}

#[test]
fn a_bad_config_fails_with_file_line_column_and_what_to_write() {
    let path = write_config(
        "bad",
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\nstrategy = \"insert\"\n\
         delimiter = \"~\"\n[[service.backend]]\nname = \"app1\"\naddress = \"127.0.0.1:3001\"\nweight = 0\n",
    );
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    let shown = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{shown}:6:13: `delimiter` applies only to strategy = \"prefix\", not \"insert\": remove it"
            ),
            format!("{shown}:10:10: weight must be from 1 to 1000"),
        ]
    );
}

#[test]
fn unknown_keys_and_bad_values_are_named_with_their_place() {
    let cases = [
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\ntimeout = \"5s\"\n",
            "4:1",
            "unknown key `timeout`: the keys here are `name`, `listen`,",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nbalance = \"fastest\"\n",
            "4:11",
            "unknown variant `fastest`",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nbalanse = \"random\"\n",
            "4:1",
            "unknown key `balanse`: did you mean `balance`?",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\nstrategy = \"prefix\"\ncookie = \"JSESSIONID\"\ndelimeter = \"-\"\n",
            "7:1",
            "unknown key `delimeter`: did you mean `delimiter`? The keys here for strategy = \"prefix\" are `strategy`, `cookie`, `delimiter`, `seal`, `key_file`, `max_idle`, `max_life`\n",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nweight = \"2\"\n",
            "7:10",
            "expected a whole number: write `weight = 2`",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"localhost:8280\"]\n",
            "3:11",
            "listen takes an IP address, not a host name: write \"127.0.0.1:8280\"",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"app1\"\n",
            "6:11",
            "backend address \"app1\" has no port: write \"host:port\", e.g. \"app1:3001\"",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"no-such-host.invalid:80\"\n",
            "6:11",
            "cannot resolve backend address \"no-such-host.invalid:80\": ",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [{ address = \"127.0.0.1:0\", tls = true }]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "3:11",
            "tls = true needs the service's certificates: add a [[service.tls]] table",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [{ address = \"127.0.0.1:0\", redirect_https = true }]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "3:11",
            "redirect_https needs a TLS listener in this service",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8280\", \"127.0.0.1:8280\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "1:1",
            "listen address 127.0.0.1:8280 is listed twice in service \"web\": list it once",
        ),
        (
            "access_log = \"xml\"\n",
            "1:14",
            "unknown variant `xml`, expected `text` or `json`",
        ),
        (
            "shutdown_grace = \"30\"\n",
            "1:18",
            "write a whole number and a unit",
        ),
        (
            "threads = 0\npin_threads = true\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "1:11",
            "threads must be at least 1",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"localhost\"]\n",
            "3:11",
            "invalid listen address \"localhost\"",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\nstrategy = \"prefix\"\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "5:12",
            "needs the app's session cookie",
        ),
        (
            &hash_service("key = \"ip\""),
            "6:7",
            "invalid hash key \"ip\": write key = \"source-ip\"",
        ),
        (
            &hash_service("key = \"header:X-User\"\ntrusted_proxies = [\"10.0.0.0/8\"]"),
            "7:19",
            "`trusted_proxies` is a [[service]] key",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"10.0.0.0/33\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "4:20",
            "is not an address or CIDR network",
        ),
        (
            &hash_service("balance_factor = 0.5"),
            "6:18",
            "balance_factor must be a number above 1.0",
        ),
        (
            &hash_service("cookie = \"sid\""),
            "6:10",
            "write key = \"cookie:NAME\"",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nrebalance_after = \"30m\"\n[service.affinity]\nstrategy = \"hash\"\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "4:19",
            "rebalance_after applies to strategy = \"insert\" or \"prefix\"",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nrebalance_after = \"2h\"\n[service.affinity]\nstrategy = \"insert\"\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "4:19",
            "is above session_idle (1800s), past which stickyd forgets",
        ),
        (
            "[resolver]\nnameservers = [\"dns.example\"]\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            "2:16",
            "name server \"dns.example\" is not an address",
        ),
        (
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\ndiscovery = { dns_srv = \"\" }\n",
            "4:25",
            "dns_srv \"\" is not an SRV name",
        ),
        (
            &shared_table_service("redis+sentinel://10.0.0.1:26379,10.0.0.2:port/mymaster"),
            "8:13",
            "invalid redis_url: sentinel address \"10.0.0.2:port\" is not host:port: write e.g. \"10.0.0.1:26379\"",
        ),
        (
            &shared_table_service("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379"),
            "8:13",
            "invalid redis_url: names no master: add the name the sentinels monitor it under",
        ),
        (
            &shared_table_service("redis//127.0.0.1:6379"),
            "8:13",
            "invalid redis_url: ",
        ),
    ];
    for (index, (text, place, message)) in cases.into_iter().enumerate() {
        let path = write_config(&format!("case{index}"), text);
        let (ok, _, stderr) = check(&path);
        assert!(!ok, "{text}");
        let expected = format!("{}:{place}: ", path.display());
        assert!(
            stderr.starts_with(&expected) && stderr.contains(message),
            "{text}\nexpected {expected}… {message}\ngot {stderr}"
        );
    }
}

/// A valid hash service with `affinity_line` as the sixth line of the file.
fn hash_service(affinity_line: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\nstrategy = \"hash\"\n{affinity_line}\n\
         [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
    )
}

/// A valid service with a stick table in Redis at `redis_url`, on the eighth line of the file.
fn shared_table_service(redis_url: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\nstrategy = \"stick-table\"\ncookie = \"sid\"\n\
         store = \"redis\"\nredis_url = \"{redis_url}\"\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
    )
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (ok, _, stderr) = check(Path::new("/nonexistent/stickyd.toml"));
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/stickyd.toml: cannot read the config file"),
        "{stderr}"
    );
}
