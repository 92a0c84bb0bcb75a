//! The test servers work: the shared one answers JetStream requests, and a private one
//! keeps its streams across a restart.

mod support;

use support::{NatsServer, shared_url};

#[tokio::test]
async fn the_shared_server_has_jetstream() {
    let client = async_nats::connect(shared_url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream.query_account().await.expect("JetStream is enabled");
}

#[tokio::test]
async fn a_private_server_keeps_its_streams_across_a_restart() {
    let mut server = NatsServer::start();
    let jetstream = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "kept".into(),
            subjects: vec!["kept.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    jetstream
        .publish("kept.a", "1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    drop(jetstream);
    server.restart();
    let jetstream = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut stream = jetstream.get_stream("kept").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}
