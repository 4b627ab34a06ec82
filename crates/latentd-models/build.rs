//! Compiles the oneDNN bridge (`src/nn/onednn/shim.c`) when the `onednn` feature is on.

fn main() {
    println!("cargo:rerun-if-changed=src/nn/onednn/shim.c");
    #[cfg(feature = "onednn")]
    {
        cc::Build::new()
            .file("src/nn/onednn/shim.c")
            .opt_level(2)
            .compile("latentd_onednn");
        println!("cargo:rustc-link-lib=dnnl");
        println!("cargo:rustc-link-lib=gomp");
    }
}
