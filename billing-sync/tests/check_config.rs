//! `billing-sync check-config` against good and bad policy files.

use std::process::Command;

fn check_config(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_billing-sync"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("billing-sync runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_policy_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/creditgate.example.yaml");
    let (code, stdout, _) = check_config(&path);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

#[test]
fn every_problem_is_printed_with_file_line_and_column() {
    let path = std::env::temp_dir().join(format!("cg-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "plans: {}\ndefault_plan: nope\nroutes:\n - {path: x, cost: \"-1\"}\n",
    )
    .expect("temp dir is writable");
    let (code, _, stderr) = check_config(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(1));
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    let prefix = format!("{}:", path.display());
    for line in lines {
        assert!(line.starts_with(&prefix), "{line}");
        let rest = &line[prefix.len()..];
        let mut parts = rest.splitn(3, ':');
        assert!(
            parts.next().is_some_and(|l| l.parse::<u64>().is_ok()),
            "{line}"
        );
        assert!(
            parts.next().is_some_and(|c| c.parse::<u64>().is_ok()),
            "{line}"
        );
    }
}

#[test]
fn stripe_sync_refuses_a_live_key_outside_production() {
    let bin = env!("CARGO_BIN_EXE_billing-sync");
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/creditgate.example.yaml"
    );
    let out = std::process::Command::new(bin)
        .args(["stripe-sync", "--config", config])
        .env("STRIPE_SECRET_KEY", format!("sk_{}_{}", "live", "fake-key"))
        .env_remove("CREDITGATE_ENV")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CREDITGATE_ENV=production"), "{stderr}");
    assert!(!stderr.contains("fake-key"), "the key is never printed");
}
