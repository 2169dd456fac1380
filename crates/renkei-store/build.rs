//! `embed_migrations!` reads the migration directories at compile time; without this, adding a
//! migration did not rebuild the crate and the binary silently lacked it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
