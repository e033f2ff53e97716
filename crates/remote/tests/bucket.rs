//! The bucket layer against a real S3 API (moto's server): generations go up and come back
//! byte for byte, a checkpoint uploads only its new files, and the pointer's compare-and-swap
//! fences out a writer that lost its data directory.

mod s3_server;

use std::path::Path;

use earshot_remote::{Lost, Remote};
use s3_server::S3Server;

fn remote(server: &S3Server, url: &str) -> Remote {
    Remote::open_with(url, server.env()).unwrap()
}

/// A fake generation directory: two parts and a manifest.
fn generation(dir: &Path, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let g = dir.join(name);
    for (rel, body) in files {
        let p = g.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    earshot_store::write_file_list(&g).unwrap();
    g
}

/// A generation of one part and a manifest.
fn first_generation(dir: &Path) -> std::path::PathBuf {
    generation(
        dir,
        "gen-000001",
        &[
            ("events/part-00000001.parquet", "one"),
            ("manifest.json", "{1}"),
        ],
    )
}

/// Runs `code` with boto3 client `c` on the test server (a second client, so that what the test
/// sees does not rely on the code under test); `sys.argv[2:]` are `args`. Its output.
fn boto3(server: &S3Server, code: &str, args: &[&str]) -> String {
    let script = format!(
        "import boto3,sys; c=boto3.client('s3',endpoint_url=sys.argv[1],region_name='us-east-1',aws_access_key_id='t',aws_secret_access_key='t'); {code}"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script, &server.endpoint()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn objects(server: &S3Server) -> usize {
    boto3(
        server,
        "print(c.list_objects_v2(Bucket='earshot-test').get('KeyCount',0))",
        &[],
    )
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn generations_go_up_once_and_come_back_whole() {
    let server = S3Server::start();
    server.bucket("earshot-test");
    let tmp = tempfile::tempdir().unwrap();
    let w = remote(&server, "s3://earshot-test/ev");
    assert!(w.current("").unwrap().is_none());
    let g1 = first_generation(tmp.path());
    let c1 = w.push("", &g1, None).unwrap().unwrap();
    assert_eq!(objects(&server), 4, "two files, their list and the pointer");
    // The next generation keeps part 1 (hard-linked, as the store does) and adds part 2.
    let g2 = tmp.path().join("gen-000002");
    std::fs::create_dir_all(g2.join("events")).unwrap();
    std::fs::hard_link(
        g1.join("events/part-00000001.parquet"),
        g2.join("events/part-00000001.parquet"),
    )
    .unwrap();
    std::fs::write(g2.join("events/part-00000002.parquet"), "two").unwrap();
    std::fs::write(g2.join("manifest.json"), "{2}").unwrap();
    earshot_store::write_file_list(&g2).unwrap();
    let c2 = w.push("", &g2, Some(&c1)).unwrap().unwrap();
    assert_eq!(
        objects(&server),
        7,
        "only part 2, the new manifest and its file list went up"
    );
    assert!(c2.generation().unwrap().starts_with("gen-000002-"));

    // Another process reads it back.
    let r = remote(&server, "s3://earshot-test/ev/");
    let local = tmp.path().join("reader");
    let cur = r.current("").unwrap().unwrap();
    let dir = r.pull(&cur, &local).unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("events/part-00000001.parquet")).unwrap(),
        "one"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("events/part-00000002.parquet")).unwrap(),
        "two"
    );
    assert_eq!(
        std::fs::canonicalize(local.join("current")).unwrap(),
        std::fs::canonicalize(&dir).unwrap()
    );

    // A third generation keeps both parts and writes a new manifest. Generation 1's manifest,
    // listed by neither the second nor the third, is deleted; the second's is kept for readers
    // still pulling it.
    let g3 = tmp.path().join("gen-000003");
    std::fs::create_dir_all(g3.join("events")).unwrap();
    for part in ["part-00000001.parquet", "part-00000002.parquet"] {
        std::fs::hard_link(g2.join("events").join(part), g3.join("events").join(part)).unwrap();
    }
    std::fs::write(g3.join("manifest.json"), "{3}").unwrap();
    earshot_store::write_file_list(&g3).unwrap();
    w.push("", &g3, Some(&c2)).unwrap().unwrap();
    assert_eq!(
        objects(&server),
        7,
        "manifest 3 and its list went up, manifest 1 and its list went away"
    );
    let old = r
        .pull(&cur, &tmp.path().join("late-reader"))
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(old.join("manifest.json")).unwrap(),
        "{2}"
    );
    // The reader takes over: a generation it builds from the files it pulled lists their
    // objects again instead of uploading them.
    let cur3 = r.current("").unwrap().unwrap();
    let pulled = r.pull(&cur3, &local).unwrap().unwrap();
    let g4 = tmp.path().join("gen-000004");
    std::fs::create_dir_all(g4.join("events")).unwrap();
    for part in ["part-00000001.parquet", "part-00000002.parquet"] {
        std::fs::hard_link(
            pulled.join("events").join(part),
            g4.join("events").join(part),
        )
        .unwrap();
    }
    std::fs::write(g4.join("manifest.json"), "{4}").unwrap();
    earshot_store::write_file_list(&g4).unwrap();
    r.push("", &g4, Some(&cur3)).unwrap().unwrap();
    assert_eq!(objects(&server), 9, "only manifest 4 and its list went up");
    // A prefix elsewhere in the bucket is another data set.
    assert!(
        remote(&server, "s3://earshot-test/other")
            .current("")
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_writer_whose_directory_was_claimed_cannot_publish_over_the_new_owner() {
    let server = S3Server::start();
    server.bucket("earshot-test");
    let tmp = tempfile::tempdir().unwrap();
    let old = remote(&server, "s3://earshot-test/ev");
    let new = remote(&server, "s3://earshot-test/ev");
    let dir = "partitions/3";
    let g1 = generation(tmp.path(), "gen-000001", &[("manifest.json", "{old 1}")]);
    let held = old.push(dir, &g1, None).unwrap().unwrap();
    // Creating a pointer that exists fails too.
    assert_eq!(new.push(dir, &g1, None).unwrap().unwrap_err(), Lost);

    // The new owner takes it over: reads the pointer, then claims it.
    let seen = new.current(dir).unwrap().unwrap();
    let mut claimed = new.claim(dir, Some(&seen)).unwrap().unwrap();
    assert_eq!(claimed.generation(), held.generation());

    // The old owner wakes up and checkpoints with what it held: refused.
    let g2 = generation(tmp.path(), "gen-000002", &[("manifest.json", "{old 2}")]);
    let before = objects(&server);
    assert_eq!(old.push(dir, &g2, Some(&held)).unwrap().unwrap_err(), Lost);
    assert_eq!(
        objects(&server),
        before,
        "the refused push left nothing behind"
    );
    // The new owner's checkpoints go on.
    let g3 = generation(
        tmp.path().join("n").as_path(),
        "gen-000002",
        &[("manifest.json", "{new 2}")],
    );
    claimed = new.push(dir, &g3, Some(&claimed)).unwrap().unwrap();
    let now = old.current(dir).unwrap().unwrap();
    assert_eq!(now.generation(), claimed.generation());
    let pulled = old.pull(&now, &tmp.path().join("check")).unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(pulled.join("manifest.json")).unwrap(),
        "{new 2}"
    );
    // A claim from a stale read is refused as well.
    assert_eq!(old.claim(dir, Some(&seen)).unwrap().unwrap_err(), Lost);
}

#[test]
fn a_generation_changed_in_the_bucket_is_refused_by_name() {
    let server = S3Server::start();
    server.bucket("earshot-test");
    let tmp = tempfile::tempdir().unwrap();
    let w = remote(&server, "s3://earshot-test/ev");
    let g1 = first_generation(tmp.path());
    let c1 = w.push("", &g1, None).unwrap().unwrap();
    // Someone rewrites the part in the bucket, same size, other bytes (through a second client).
    let key = format!(
        "ev/{}/events/part-00000001.parquet",
        c1.generation().unwrap()
    );
    boto3(
        &server,
        "c.put_object(Bucket='earshot-test',Key=sys.argv[2],Body=b'ONE')",
        &[&key],
    );
    let r = remote(&server, "s3://earshot-test/ev");
    let local = tmp.path().join("reader");
    let err = r
        .pull(&r.current("").unwrap().unwrap(), &local)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("events/part-00000001.parquet") && err.contains("has changed"),
        "{err}"
    );
    assert!(!local.join("current").exists(), "nothing was made current");
}
