//! Links the driver against the WDK the way `wdk-build` configures a KMDF binary (the
//! driver model comes from `[package.metadata.wdk.driver-model]` in Cargo.toml).

fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
