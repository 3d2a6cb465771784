mod support;

#[tokio::test]
async fn gateway_starts_and_reports_its_address() {
    let gw = support::Gateway::start("[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/x\"\nbackend = \"127.0.0.1:1\"\n").await;
    assert_eq!(gw.addrs.len(), 1);
    assert_ne!(gw.addr().port(), 0);
}
