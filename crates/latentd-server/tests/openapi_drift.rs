//! The committed `openapi/openapi.json` must be what the code generates.

#[test]
fn committed_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = latentd_server::http::openapi::json();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date; regenerate it with\n  cargo run -p latentd-server -- openapi > openapi/openapi.json"
    );
    // Every route of the API is described.
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for route in [
        "/v1/generate",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/images/{index}",
        "/v1/images/generations",
        "/v1/models",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(
            doc["paths"][route].is_object(),
            "{route} missing from the OpenAPI document"
        );
    }
}
