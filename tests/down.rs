//! `slipway down`: what `slipway up` leaves running goes, the data stays (unless `--purge`), and
//! `slipway up` on the same data serves again. Real Docker engine.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const APP: &str =
    "FROM slipway-test/busybox:latest\nCOPY . /www\nCMD exec httpd -f -p \"$PORT\" -h /www\n";

fn down(data: &Path, args: &[&str]) -> Output {
    Command::new(SLIPWAY)
        .arg("down")
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("slipway down")
}

/// The containers (running or not) of installation `instance` on the engine.
fn of(instance: &str) -> Vec<String> {
    containers(&format!("label=dev.slipway.instance={instance}"))
}

/// Removes what a failed run left behind: containers and images.
struct Cleanup {
    instance: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_and_images(
            &format!("label=dev.slipway.instance={}", self.instance),
            &self.image,
        );
    }
}

/// Pushes a new version of the site and checks that the router serves it.
fn push_and_get(server: &Server, alice: &Client, app: &Path, name: &str, text: &str) {
    commit(alice, app, &[("index.html", text)], text.trim());
    let url = server.url(&format!("{name}.git"));
    assert_ok(&alice.git(app, &["push", "-f", url.as_str(), "main"]));
    assert_eq!(
        http(
            server.http_port.expect("router"),
            &format!("{name}.localhost")
        ),
        (200, text.to_owned())
    );
}

#[test]
fn down_removes_the_containers_up_left_keeps_the_data_and_up_serves_again() {
    let scratch = Scratch::new();
    let data = scratch.data();
    let key = keygen(&scratch, "alice");
    let alice = Client::new(&key);
    let name = format!("down-{}", std::process::id());
    apply_ok(
        &data,
        &(customer_yaml("alice", &[&key]) + &webspace_yaml(&name, "alice")),
    );
    // As `slipway up` computes it: from the absolute path of the data directory.
    let instance =
        slipway_operator::docker::instance(&std::path::absolute(&data).expect("absolute"));
    let _cleanup = Cleanup {
        instance: instance.clone(),
        image: format!("slipway/{name}"),
    };
    let app = scratch.path("app");
    work_tree(&alice, &app, &[("Dockerfile", APP), ("index.html", "v0\n")]);

    let server = Server::up(&data, &["--drain", "1"]);
    push_and_get(&server, &alice, &app, &name, "v1\n");
    assert_eq!(of(&instance).len(), 1, "the app runs");

    // While `up` runs, down refuses and removes nothing.
    let refused = down(&data, &[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("error: `slipway up`") && said.contains("hint: stop it first"),
        "{said}"
    );
    assert_eq!(of(&instance).len(), 1, "nothing removed while up runs");

    // `up` leaves its app running when it stops, by design; down removes it.
    assert_ok(&server.stop());
    assert_eq!(of(&instance).len(), 1, "up leaves its app running");
    let downed = down(&data, &[]);
    assert_ok(&downed);
    let said = String::from_utf8_lossy(&downed.stdout);
    assert!(said.contains("removed container slipway-"), "{said}");
    assert!(said.contains("slipway down: installation"), "{said}");
    assert_eq!(of(&instance), Vec::<String>::new(), "{said}");
    assert!(data.join("resources").is_dir(), "the data stays");

    // The same data directory: the webspace, its repository and key are all still there.
    let server = Server::up(&data, &["--drain", "1"]);
    push_and_get(&server, &alice, &app, &name, "v2\n");
    assert_ok(&server.stop());

    let purged = down(&data, &["--purge"]);
    assert_ok(&purged);
    let said = String::from_utf8_lossy(&purged.stdout);
    assert!(said.contains("removed data directory"), "{said}");
    assert_eq!(of(&instance), Vec::<String>::new(), "{said}");
    assert!(!data.exists(), "--purge removes the data directory");
}
