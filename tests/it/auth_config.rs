//! Configuration rules of the authorization features, checked with `wsgate check --config`:
//! each unsafe configuration is refused with exit code 2 and the offending key on stderr, and the
//! same configuration with that one thing fixed is accepted (exit 0).

use crate::support::auth;

use std::path::Path;

/// A variable no test sets: `secret_env` naming it must be refused.
const UNSET_VAR: &str = "WSGATE_AUTH_CONFIG_TEST_NEVER_SET";
const SECRET_32: &str = "0123456789abcdef0123456789abcdef";

fn config(route: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/r\"\nbackend = \"127.0.0.1:9\"\n{route}\n"
    )
}

fn dir_with_keys() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret-32"), format!("{SECRET_32}\n")).unwrap();
    // 31 bytes plus a newline: the newline is ignored, so this is too short.
    std::fs::write(
        dir.path().join("secret-31"),
        format!("{}\n", &SECRET_32[..31]),
    )
    .unwrap();
    std::fs::copy(
        auth::fixture("test-only-rs256-public.pem"),
        dir.path().join("rs256-public.pem"),
    )
    .unwrap();
    dir
}

/// Assert that `check` refuses `route` with exit code 2 and `key` on stderr.
fn refused(dir: &Path, route: &str, key: &str) -> String {
    let (code, stdout, stderr) = auth::check_config(dir, &config(route), &[UNSET_VAR]);
    assert_eq!(
        code, 2,
        "expected exit code 2 for:\n{route}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("configuration error") && stderr.contains(key),
        "stderr should name {key:?} for:\n{route}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains("configuration OK"),
        "stdout claims OK: {stdout}"
    );
    stderr
}

/// Assert that `check` accepts `route`.
fn accepted(dir: &Path, route: &str) {
    let (code, stdout, stderr) = auth::check_config(dir, &config(route), &[UNSET_VAR]);
    assert_eq!(
        code, 0,
        "expected exit code 0 for:\n{route}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("configuration OK"), "stdout: {stdout}");
}

const COOKIE_AUTH: &str = r#"[route.auth]
type = "jwt"
token_from = "cookie"
cookie = "session"
algorithms = ["HS256"]
secret_file = "secret-32""#;

const FORWARD_AUTH: &str = r#"[route.auth]
type = "forward"
url = "http://127.0.0.1:4181/verify""#;

const BEARER_AUTH: &str = r#"[route.auth]
type = "jwt"
token_from = "bearer"
algorithms = ["HS256"]
secret_file = "secret-32""#;

#[test]
fn cookie_route_needs_allowed_origins() {
    let dir = dir_with_keys();
    refused(dir.path(), COOKIE_AUTH, "route[0].allowed_origins");
    accepted(
        dir.path(),
        &format!("allowed_origins = [\"https://app.example.com\"]\n{COOKIE_AUTH}"),
    );
}

#[test]
fn forward_route_needs_allowed_origins() {
    let dir = dir_with_keys();
    refused(dir.path(), FORWARD_AUTH, "route[0].allowed_origins");
    accepted(
        dir.path(),
        &format!("allowed_origins = [\"https://app.example.com\"]\n{FORWARD_AUTH}"),
    );
}

#[test]
fn allow_missing_origin_is_refused_on_ambient_credentials() {
    let dir = dir_with_keys();
    let origins = "allowed_origins = [\"https://app.example.com\"]";
    refused(
        dir.path(),
        &format!("{origins}\nallow_missing_origin = true\n{COOKIE_AUTH}"),
        "route[0].allow_missing_origin",
    );
    refused(
        dir.path(),
        &format!("{origins}\nallow_missing_origin = true\n{FORWARD_AUTH}"),
        "route[0].allow_missing_origin",
    );
    // Without allowed_origins it means nothing, and is refused as well.
    refused(
        dir.path(),
        &format!("allow_missing_origin = true\n{BEARER_AUTH}"),
        "route[0].allow_missing_origin",
    );
    // On a bearer route with an Origin list it is fine.
    accepted(
        dir.path(),
        &format!("{origins}\nallow_missing_origin = true\n{BEARER_AUTH}"),
    );
}

#[test]
fn algorithm_none_is_refused() {
    let dir = dir_with_keys();
    for algs in [r#"["none"]"#, r#"["None"]"#, r#"["HS256", "none"]"#] {
        let route = format!(
            "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = {algs}\nsecret_file = \"secret-32\""
        );
        refused(dir.path(), &route, "route[0].auth.algorithms");
    }
    // An empty list is refused too.
    let route = "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = []\nsecret_file = \"secret-32\"";
    refused(dir.path(), route, "route[0].auth");
}

#[test]
fn mixed_key_families_are_refused() {
    let dir = dir_with_keys();
    let stderr = refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\", \"RS256\"]\nsecret_file = \"secret-32\"",
        "route[0].auth",
    );
    assert!(stderr.contains("route[0].auth:"), "{stderr}");
    refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"RS256\", \"HS256\"]\nkey_file = \"rs256-public.pem\"",
        "route[0].auth",
    );
    refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"RS256\", \"ES256\"]\nkey_file = \"rs256-public.pem\"",
        "route[0].auth",
    );
    // The key must match the family: an RSA key for HS256, or a secret for RS256, is refused.
    refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nkey_file = \"rs256-public.pem\"",
        "route[0].auth",
    );
    refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"RS256\"]\nsecret_file = \"secret-32\"",
        "route[0].auth",
    );
    refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"ES256\"]\nkey_file = \"rs256-public.pem\"",
        "route[0].auth",
    );
    accepted(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"RS256\"]\nkey_file = \"rs256-public.pem\"",
    );
}

#[test]
fn secret_env_must_name_a_set_variable() {
    let dir = dir_with_keys();
    let stderr = refused(
        dir.path(),
        &format!(
            "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_env = \"{UNSET_VAR}\""
        ),
        "route[0].auth.secret_env",
    );
    assert!(stderr.contains(UNSET_VAR), "{stderr}");
}

#[test]
fn short_hs256_secrets_are_refused() {
    let dir = dir_with_keys();
    let stderr = refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_file = \"secret-31\"",
        "route[0].auth",
    );
    assert!(stderr.contains("32"), "{stderr}");
    assert!(
        !stderr.contains(&SECRET_32[..31]),
        "the secret leaked to stderr: {stderr}"
    );
    accepted(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_file = \"secret-32\"",
    );
    // A missing secret file names its key.
    refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_file = \"no-such-file\"",
        "route[0].auth.secret_file",
    );
    // Exactly one key source.
    refused(
        dir.path(),
        "[route.auth]\ntype = \"jwt\"\ntoken_from = \"bearer\"\nalgorithms = [\"HS256\"]\nsecret_file = \"secret-32\"\nkey_file = \"rs256-public.pem\"",
        "route[0].auth.key_file",
    );
}

#[test]
fn subprotocol_tokens_need_an_answerable_subprotocol() {
    let dir = dir_with_keys();
    let auth = "[route.auth]\ntype = \"jwt\"\ntoken_from = \"subprotocol\"\nalgorithms = [\"HS256\"]\nsecret_file = \"secret-32\"";
    refused(dir.path(), auth, "route[0].subprotocols");
    refused(
        dir.path(),
        &format!("subprotocols = [\"access_token.x\"]\n{auth}"),
        "route[0].subprotocols",
    );
    accepted(dir.path(), &format!("subprotocols = [\"app.v1\"]\n{auth}"));
}
