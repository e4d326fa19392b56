//! Signed and encrypted backend ids end to end: forged values are new sessions, keys rotate
//! without losing sessions, and idle bindings expire.

mod common;

use common::{Browser, config, proxy_over, spawn_backends, temp_file, within_timeout};
use tokio::sync::oneshot;

const KEY_A: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const KEY_B: &str = "f9e8d7c6b5a4938271605f4e3d2c1b0af9e8d7c6b5a4938271605f4e3d2c1b0a";

/// Writes a key file with `keys` (first one seals) and returns the affinity table using it.
fn sealed(name: &str, strategy: &str, mode: &str, keys: &[&str], extra: &str) -> String {
    let path = temp_file(&format!("{name}.keys"));
    std::fs::write(
        &path,
        format!("# stickyd keys, first one seals\n{}\n", keys.join("\n")),
    )
    .unwrap();
    format!(
        "[service.affinity]\nstrategy = \"{strategy}\"\n{extra}seal = \"{mode}\"\nkey_file = \"{}\"\n",
        path.display()
    )
}

#[tokio::test]
async fn an_encrypted_insert_cookie_sticks_hides_the_backend_and_a_forged_one_is_a_new_session() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(
            &backends,
            &sealed("enc", "insert", "encrypted", &[KEY_A], ""),
        )
        .await;
        let (browser, bound) = common::assert_sticks_and_spreads(&proxy, "/").await;
        let value = browser.jar["SERVERID"].clone();
        assert!(
            !value.contains(&bound),
            "the encrypted value names its backend: {value}"
        );
        let mut forger = Browser::new();
        forger.jar.insert("SERVERID".into(), bound.clone());
        let page = forger.get(&proxy.url("/")).await;
        assert_eq!(page.status, 200);
        assert_ne!(
            forger.jar["SERVERID"], bound,
            "a plain id was accepted and kept"
        );
    })
    .await;
}

#[tokio::test]
async fn a_rotated_key_keeps_sessions_and_a_dropped_key_ends_them() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let before = proxy_over(&backends, &sealed("rot1", "insert", "signed", &[KEY_A], "")).await;
        let (mut browser, bound) = common::assert_sticks_and_spreads(&before, "/").await;
        let issued = browser.jar["SERVERID"].clone();
        drop(before);
        // The new key seals, the old one still opens: the session holds.
        let rotated = proxy_over(
            &backends,
            &sealed("rot2", "insert", "signed", &[KEY_B, KEY_A], ""),
        )
        .await;
        for _ in 0..3 {
            assert_eq!(browser.get(&rotated.url("/")).await.backend(), bound);
        }
        // Once the old key is gone, a value it sealed is a new session.
        let dropped =
            proxy_over(&backends, &sealed("rot3", "insert", "signed", &[KEY_B], "")).await;
        let mut holder = Browser::new();
        holder.jar.insert("SERVERID".into(), issued);
        let page = holder.get(&dropped.url("/")).await;
        assert_eq!(page.status, 200);
        assert!(
            !page.set_cookies().is_empty(),
            "a value sealed by a dropped key must be re-issued"
        );
    })
    .await;
}

#[tokio::test]
async fn a_signed_prefix_sticks_and_the_backend_sees_its_own_value() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let affinity = sealed(
            "prefix",
            "prefix",
            "signed",
            &[KEY_A],
            "cookie = \"JSESSIONID\"\n",
        );
        let proxy = proxy_over(&backends, &affinity).await;
        let (mut browser, bound) =
            common::assert_sticks_and_spreads(&proxy, "/session/JSESSIONID").await;
        browser.get(&proxy.url("/")).await;
        let value = &browser.jar["JSESSIONID"];
        let (prefix, app) = value.split_once('~').unwrap();
        assert!(
            prefix.starts_with(&format!("v2.{bound}.")) && prefix.len() > bound.len() + 10,
            "{value}"
        );
        assert_eq!(app, format!("{bound}-1"));
        let seen = backends
            .iter()
            .find(|backend| backend.name == bound)
            .unwrap()
            .seen();
        // The last request on that backend is the browser's: the prefix is gone, byte for byte.
        assert_eq!(
            seen.last().unwrap().headers["cookie"],
            format!("JSESSIONID={bound}-1")
        );
    })
    .await;
}

#[tokio::test]
async fn max_idle_and_max_life_need_sealed_ids() {
    let backends = spawn_backends(1).await;
    let text = config(
        &[&backends[0]],
        "[service.affinity]\nstrategy = \"insert\"\nmax_idle = \"30m\"\n",
    );
    let error = stickyd::config::Config::parse(&text, "<test>")
        .unwrap_err()
        .to_string();
    assert!(error.contains("`max_idle` needs sealed ids"), "{error}");
}

/// stickyd running two services, both with insert affinity on the same cookie name, the same
/// key file and the same backend names (and addresses). Returns each service's address and a
/// sender that stops stickyd.
async fn two_services(
    backends: &[common::TestBackend],
    mode: &str,
) -> (Vec<std::net::SocketAddr>, oneshot::Sender<()>) {
    let key_file = temp_file(&format!("shared-{mode}.keys"));
    std::fs::write(&key_file, format!("{KEY_A}\n")).unwrap();
    let mut text = String::new();
    for service in ["shop", "blog"] {
        text.push_str(&format!(
            "[[service]]\nname = \"{service}\"\nlisten = [\"127.0.0.1:0\"]\ndebug_header = true\n\
             [service.affinity]\nstrategy = \"insert\"\ncookie = \"SERVERID\"\n\
             seal = \"{mode}\"\nkey_file = \"{}\"\n",
            key_file.display()
        ));
        for backend in backends {
            text.push_str(&format!(
                "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\n",
                backend.name, backend.addr
            ));
        }
    }
    let config = stickyd::config::Config::parse(&text, "<test>").unwrap_or_else(|e| panic!("{e}"));
    // One listener per service, in the order of the config.
    let listeners = stickyd::server::bind(&config)
        .await
        .expect("bind 127.0.0.1:0");
    let addresses = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        stickyd::runtime::run(&config, listeners, async {
            let _ = stopped.await;
        })
        .await;
    });
    (addresses, stop)
}

#[tokio::test]
async fn a_cookie_sealed_for_one_service_is_invalid_at_another_sharing_keys_and_backend_names() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        for mode in ["signed", "encrypted"] {
            let (addresses, stop) = two_services(&backends, mode).await;
            let (shop, blog) = (addresses[0], addresses[1]);
            let mut browser = Browser::new();
            let first = browser.get(&format!("http://{shop}/")).await;
            let bound = first.backend().to_string();
            let shop_cookie = browser.jar["SERVERID"].clone();
            let again = browser.get(&format!("http://{shop}/")).await;
            assert_eq!(
                again.headers["x-stickyd"],
                format!("backend={bound}; affinity=hit"),
                "{mode}: the cookie holds at its own service"
            );
            // The same cookie, sent to the other service: a new session, counted invalid.
            let mut visitor = Browser::new();
            visitor.jar.insert("SERVERID".into(), shop_cookie.clone());
            let page = visitor.get(&format!("http://{blog}/")).await;
            assert_eq!(page.status, 200);
            let debug = page.headers["x-stickyd"].to_str().unwrap();
            assert!(
                debug.ends_with("; affinity=invalid"),
                "{mode}: the shop's cookie was honoured by the blog: {debug}"
            );
            let reissued = &visitor.jar["SERVERID"];
            assert_ne!(
                reissued, &shop_cookie,
                "{mode}: the blog did not re-issue its own cookie"
            );
            let back = visitor.get(&format!("http://{blog}/")).await;
            assert!(
                back.headers["x-stickyd"]
                    .to_str()
                    .unwrap()
                    .ends_with("; affinity=hit"),
                "{mode}: the re-issued cookie holds at the blog"
            );
            let _ = stop.send(());
        }
    })
    .await;
}
