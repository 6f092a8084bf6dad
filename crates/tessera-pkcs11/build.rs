//! Link options of the shared library.

fn main() {
    // `-z nodelete` keeps the library mapped after `dlclose`. The Rust standard library
    // registers thread-local destructors that point into this library (the client's and
    // tracing's thread locals); a host that loads us with `dlopen`, calls in from a thread, then
    // unloads us with `dlclose` would otherwise crash when that thread exits and its
    // destructors jump into unmapped code.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
