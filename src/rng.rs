//! [`os_rng`]: randomness from the operating system, for every draw.

/// A random source that asks the operating system for every draw: a
/// `CryptoRng` that is also `Send` and `Sync` (and zero-sized), so an async
/// handler can hold it across an `.await` where `rand::rng()` (thread-local)
/// cannot: in an axum handler, `rand::rng()` held across an `.await` makes
/// the handler's future not `Send`, which axum reports as an opaque
/// "the trait `Handler` is not implemented" error. Use this one there.
///
/// # Panics
///
/// A draw panics if the operating system cannot give randomness, as
/// `rand::rng()` does.
///
/// # Example
///
/// ```
/// use keyroll::store::InMemoryStore;
/// use keyroll::{KeyId, KeyManager};
///
/// async fn create(manager: &KeyManager<InMemoryStore>) -> Result<(), Box<dyn std::error::Error>> {
///     let now = time::OffsetDateTime::now_utc();
///     let (token, _event) = manager.create_key(KeyId::new("acme")?, now, &mut keyroll::os_rng()).await?;
///     println!("shown once: {}", token.expose_secret());
///     Ok(())
/// }
///
/// // The future is Send: it can run on any runtime's worker threads.
/// fn assert_send<T: Send>(_: T) {}
/// let manager = KeyManager::new(InMemoryStore::new());
/// assert_send(create(&manager));
/// ```
pub fn os_rng() -> impl rand_core::CryptoRng + Send + Sync {
    rand_core::UnwrapErr(getrandom::SysRng)
}
