//! Symbolic links through a real mount on Azurite, kept as blobfuse2 keeps them (the target
//! as the blob's content, metadata `is_symlink=true`): made with `ln -s`, `cp -a`, `tar` and
//! `rsync -a`, read back, and checked in storage with Microsoft's Python SDK.

mod common;

use common::sdk::*;
use common::*;

const C: &str = "alpha/storage/data";

fn setup() -> (Azurite, Sdk, Mount) {
    mounted_with_container("data")
}

#[test]
fn ln_s_makes_a_link_blobfuse2_reads_and_theirs_read_back() {
    let (_az, sdk, m) = setup();
    ok(m.sh(&format!(
        "mkdir -p {C}/d && echo hi > {C}/d/file && ln -s d/file {C}/rel"
    )));
    assert_eq!(ok(m.sh(&format!("readlink {C}/rel"))), "d/file\n");
    assert_eq!(ok(m.sh(&format!("cat {C}/rel"))), "hi\n");
    assert!(ok(m.sh(&format!("ls -l {C}/rel"))).starts_with("lrwxrwxrwx"));
    assert_eq!(
        ok(m.sh(&format!("stat -c %F:%s {C}/rel"))),
        "symbolic link:6\n"
    );
    let s = sdk.head("data", "rel").expect("the link is a blob");
    assert_eq!(s.data, b"d/file");
    assert_eq!(
        s.metadata.get("is_symlink").map(String::as_str),
        Some("true")
    );

    // A link blobfuse2 wrote (here through the SDK, as it writes them), dangling or not.
    sdk.ok(
        &[
            "put",
            "data",
            "theirs",
            "--data",
            "/etc/hostname",
            "--meta",
            "is_symlink=true",
        ],
        b"",
    );
    sdk.ok(
        &[
            "put",
            "data",
            "d/up",
            "--data",
            "../rel",
            "--meta",
            "is_symlink=True",
        ],
        b"",
    );
    sdk.ok(
        &[
            "put",
            "data",
            "gone",
            "--data",
            "nowhere",
            "--meta",
            "is_symlink=true",
        ],
        b"",
    );
    assert_eq!(ok(m.sh(&format!("readlink {C}/theirs"))), "/etc/hostname\n");
    assert_eq!(ok(m.sh(&format!("cat {C}/d/up"))), "hi\n");
    assert_eq!(
        ok(m.sh(&format!("find {C} -type l | sort"))),
        format!("{C}/d/up\n{C}/gone\n{C}/rel\n{C}/theirs\n")
    );
    assert!(fails(m.sh(&format!("cat {C}/gone"))).contains("No such file"));

    // mv and rm act on the link, never on its target.
    ok(m.sh(&format!("mv {C}/rel {C}/d/moved && rm {C}/gone")));
    assert_eq!(ok(m.sh(&format!("readlink {C}/d/moved"))), "d/file\n");
    let s = sdk.head("data", "d/moved").expect("moved");
    assert_eq!(
        s.metadata.get("is_symlink").map(String::as_str),
        Some("true")
    );
    assert!(sdk.head("data", "rel").is_none() && sdk.head("data", "gone").is_none());
    assert_eq!(sdk.ok(&["get", "data", "d/file"], b""), b"hi\n");

    // Names that are taken, and hard links.
    assert!(fails(m.sh(&format!("ln -s x {C}/d/file"))).contains("File exists"));
    assert!(fails(m.sh(&format!("ln {C}/d/file {C}/hard"))).contains("Operation not permitted"));
}

#[test]
fn cp_tar_and_rsync_carry_trees_with_links() {
    let (_az, sdk, m) = setup();
    let local = tempfile::tempdir().unwrap();
    let l = local.path().display();
    ok(sh_in(
        local.path(),
        "mkdir -p src/sub && echo a > src/a && ln -s a src/to_a && ln -s ../a src/sub/up && \
         ln -s /nonexistent/x src/dangling && ln -s sub src/dirlink && \
         touch -h -d 2020-01-02T03:04:05 src/to_a",
    ));
    ok(m.sh(&format!("cp -a {l}/src {C}/cp")));
    ok(m.sh(&format!(
        "tar -cf {l}/t.tar -C {l}/src . && mkdir {C}/tar && tar -xf {l}/t.tar -C {C}/tar"
    )));
    ok(m.sh(&format!("rsync -a {l}/src/ {C}/rs/")));
    for root in ["cp", "tar", "rs"] {
        ok(m.sh(&format!("diff -r --no-dereference {l}/src {C}/{root}")));
        assert_eq!(
            ok(m.sh(&format!("readlink {C}/{root}/dangling"))),
            "/nonexistent/x\n"
        );
        assert_eq!(ok(m.sh(&format!("cat {C}/{root}/sub/up"))), "a\n");
        assert_eq!(ok(m.sh(&format!("ls {C}/{root}/dirlink/"))), "up\n");
        let s = sdk
            .head("data", &format!("{root}/to_a"))
            .expect("link blob");
        assert_eq!(
            (
                s.data.as_slice(),
                s.metadata.get("is_symlink").map(String::as_str)
            ),
            (&b"a"[..], Some("true"))
        );
    }
    // The link's own time, as cp -a and rsync -a keep it.
    assert_eq!(
        ok(m.sh(&format!("stat -c %y {C}/cp/to_a"))),
        ok(sh_in(local.path(), "stat -c %y src/to_a"))
    );
    // And back out to a local disk, links as links.
    ok(m.sh(&format!(
        "cp -a {C}/rs {l}/back && rsync -a {C}/tar/ {l}/back2/"
    )));
    ok(sh_in(
        local.path(),
        "diff -r --no-dereference src back && diff -r --no-dereference src back2",
    ));
    // `rm -r` of a tree with links removes the links, not what they point to.
    ok(m.sh(&format!("rm -r {C}/cp")));
    assert!(sdk.names("data").iter().all(|n| !n.starts_with("cp/")));
    assert_eq!(ok(m.sh(&format!("cat {C}/rs/a"))), "a\n");
}
