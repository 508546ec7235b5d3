//! Two runtimes, one authenticated link: agents on each side talk across it.
//!
//! Run with `cargo run -p mfp --example federation --features federation`. Both runtimes
//! live in this process for the example's sake; the link between them is a real Noise IK
//! session over TCP on 127.0.0.1, exactly as between two machines. Each runtime has an
//! X25519 identity key; each pins the other's public key (in production the keys live in
//! files: `IdentityKey::save` / `IdentityKey::load`, and operators exchange the printed
//! public halves).

use std::time::Duration;

use mfp::federation::IdentityKey;
use mfp::federation::control::Target;
use mfp::federation::federation::{FederatedPeer, Federation, FederationConfig};
use mfp::federation::net::{NetConfig, PeerConfig};
use mfp::{DeliveredMessage, Runtime, RuntimeConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    // Two runtimes with stable identities.
    let config = |instance: &str| {
        let mut c = RuntimeConfig::default();
        c.deployment_id = b"example".to_vec();
        c.instance_id = instance.as_bytes().to_vec();
        c
    };
    let handle = tokio::runtime::Handle::current();
    let paris = Runtime::builder(config("paris")).tokio_handle(handle.clone()).build()?;
    let tokyo = Runtime::builder(config("tokyo")).tokio_handle(handle).build()?;

    // Their identity keys, and what each side pins of the other.
    let (paris_key, tokyo_key) = (IdentityKey::generate_os()?, IdentityKey::generate_os()?);
    let (paris_public, tokyo_public) = (paris_key.public(), tokyo_key.public());
    println!("paris pins tokyo as {tokyo_public}");
    println!("tokyo pins paris as {paris_public}");

    // Agents: a greeter in Paris, an echo in Tokyo that answers on the same channel.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let greeter = paris.bind_named("greeter", move |_, m: DeliveredMessage| {
        let _ = done_tx.send(String::from_utf8_lossy(&m.payload).into_owned());
    })?;
    let _echo = tokyo.bind_named("echo", |me, m: DeliveredMessage| {
        let reply = format!("echo: {}", String::from_utf8_lossy(&m.payload));
        if let Err(e) = me.send(m.channel, reply.as_bytes()) {
            eprintln!("echo could not answer: {e}");
        }
    })?;

    // Paris listens; Tokyo dials it. Each pins the other's runtime id and key.
    let mut net_paris = NetConfig::default();
    net_paris.listen = Some("127.0.0.1:0".parse()?);
    let tokyo_as_peer = FederatedPeer::new(PeerConfig { runtime: tokyo.identity(), endpoint: None, key: tokyo_public });
    let fed_paris = Federation::start(&paris, paris_key, FederationConfig::new(net_paris, vec![tokyo_as_peer])).await?;
    let paris_as_peer = FederatedPeer::new(PeerConfig {
        runtime: paris.identity(),
        endpoint: fed_paris.local_addr().map(|a| a.to_string()),
        key: paris_public,
    });
    let fed_tokyo =
        Federation::start(&tokyo, tokyo_key, FederationConfig::new(NetConfig::default(), vec![paris_as_peer])).await?;
    fed_paris.wait_up(&tokyo.identity()).await?;
    println!("link up: paris {} <-> tokyo {}", paris.identity().short(), tokyo.identity().short());

    // The greeter asks Tokyo for a channel with its agent named "echo".
    let channel = fed_paris.open_channel(greeter.id(), tokyo.identity(), Target::Name("echo".into()), 4).await?;
    println!("channel {} agreed", channel.short());

    for text in ["bonjour", "comment ça va ?", "au revoir"] {
        let receipt = greeter.send_async(channel, text.as_bytes()).await?;
        let answer = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await?.ok_or("greeter gone")?;
        println!("paris sent {text:?} (step {}), tokyo answered {answer:?}", receipt.step);
    }

    fed_tokyo.shutdown().await;
    fed_paris.shutdown().await;
    tokyo.shutdown_async().await;
    paris.shutdown_async().await;
    Ok(())
}
