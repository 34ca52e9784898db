//! `examples/auction`: a house of auctions that close themselves on time
//! (a durable watcher of a timer), and a bidder that outbids through a
//! durable flow.

use vat_tests::VatHome;

#[test]
fn an_auction_closes_itself_at_its_deadline_and_a_flow_outbids() {
    let home = VatHome::new();
    home.spawn("house", "auction");
    home.spawn("alice", "auction");
    let _daemon = home.start_daemon();
    home.ok(&[
        "send", "house", "open", "lamp", "1500", "timer", "--as", "lamp",
    ]);
    home.ok(&["send", "lamp", "bidderFacet", "--as", "lamp-bids"]);
    assert_eq!(home.ok(&["send", "lamp-bids", "bid", "\"bob\"", "5"]), "5");
    // alice reads the best bid and beats it by 10, in one flow.
    assert_eq!(
        home.ok(&["send", "alice", "outbid", "lamp-bids", "\"alice\"", "10"]),
        "15"
    );
    assert_eq!(
        home.ok(&["send", "lamp-bids", "best"]),
        r#"{"amount":15,"name":"alice"}"#
    );
    let bids = home.fails(&["send", "lamp-bids", "bid", "\"carol\"", "15"]);
    assert!(bids.contains("a bid must beat 15 (by alice)"), "{bids}");
    // One method on both facets.
    assert_eq!(
        home.ok(&["send", "lamp", "best"]),
        r#"{"amount":15,"name":"alice"}"#
    );
    // The bidder facet cannot close the auction.
    let close = home.fails(&["send", "lamp-bids", "close"]);
    assert!(close.contains("close"), "{close}");
    assert_eq!(
        home.ok(&["send", "house", "list"]),
        r#"[{"best":{"amount":15,"name":"alice"},"item":"lamp"}]"#
    );
    vat_tests::wait_until("the auction did not close at its deadline", 30, || {
        home.ok(&["send", "lamp", "status"]).contains("closed")
    });
    assert_eq!(
        home.ok(&["send", "lamp", "status"]),
        r#""lamp: closed, sold to alice for 15""#
    );
    let late = home.fails(&["send", "lamp-bids", "bid", "\"dave\"", "99"]);
    assert!(late.contains("the auction of lamp is closed"), "{late}");
    assert_eq!(home.ok(&["send", "house", "list"]), "[]");
    home.check();
}
