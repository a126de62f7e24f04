//! Login throttling. Every attempt, right or wrong, is charged to the client's
//! address and to the account it names: the first slows one client guessing
//! many accounts, the second many clients guessing one account. Both are
//! GCRA limiters (governor), so a burst is allowed and then refills evenly.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};
use tokio_util::sync::CancellationToken;

use super::Authenticator;
use crate::config::LoginRateLimits;

type KeyedLimiter<K, C> =
    RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct LoginLimiter<C: Clock = DefaultClock> {
    per_ip: KeyedLimiter<IpAddr, C>,
    per_account: KeyedLimiter<String, C>,
}

/// An attempt refused; the caller may retry after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

impl LoginLimiter<DefaultClock> {
    pub fn new(limits: LoginRateLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LoginLimiter<C> {
    pub fn with_clock(limits: LoginRateLimits, clock: C) -> Self {
        LoginLimiter {
            per_ip: RateLimiter::dashmap_with_clock(
                Quota::per_minute(limits.per_ip_per_minute),
                clock.clone(),
            ),
            per_account: RateLimiter::dashmap_with_clock(
                Quota::per_minute(limits.per_account_per_minute),
                clock,
            ),
        }
    }

    /// Charges one attempt from `client` for `email` to both limiters (both
    /// are always charged, so neither can be probed for free while the other
    /// is exhausted). Refused if either is exhausted, with the longer wait.
    pub fn check(&self, client: IpAddr, email: &str) -> Result<(), Throttled> {
        let by_client = self.per_ip.check_key(&client_key(client));
        let by_account = self.per_account.check_key(&email.trim().to_lowercase());
        let now = self.per_ip.clock().now();
        [by_client.err(), by_account.err()]
            .into_iter()
            .flatten()
            .map(|refused| refused.wait_time_from(now))
            .max()
            .map_or(Ok(()), |retry_after| Err(Throttled { retry_after }))
    }

    /// Drops keys whose allowance has fully refilled: they are
    /// indistinguishable from keys never seen, so memory tracks only the
    /// clients and accounts active in the last minute, however many an
    /// attacker invents.
    pub fn forget_idle(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_account.retain_recent();
        self.per_account.shrink_to_fit();
    }

    /// Clients plus accounts currently remembered.
    pub fn tracked_keys(&self) -> usize {
        self.per_ip.len() + self.per_account.len()
    }
}

/// An IPv6 client is keyed by its /64: one host usually owns a whole /64 and
/// could otherwise rotate addresses to get a fresh allowance each time.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// Forgets idle limiter keys every `every` until `shutdown`.
pub async fn forget_idle_until_stopped(
    auth: Arc<Authenticator>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => auth.login_limiter.forget_idle(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits(per_ip: u32, per_account: u32) -> LoginRateLimits {
        LoginRateLimits {
            per_ip_per_minute: NonZeroU32::new(per_ip).expect("non-zero"),
            per_account_per_minute: NonZeroU32::new(per_account).expect("non-zero"),
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn an_account_is_limited_whatever_the_case_of_its_email() {
        let clock = FakeRelativeClock::default();
        let limiter = LoginLimiter::with_clock(limits(100, 2), clock.clone());
        assert!(limiter.check(CLIENT, "a@shop.test").is_ok());
        assert!(limiter.check(CLIENT, "A@Shop.TEST").is_ok());
        let refused = limiter
            .check(CLIENT, "a@SHOP.test")
            .expect_err("third attempt on one account");
        // 2 per minute refill one every 30 s.
        assert_eq!(refused.retry_after, Duration::from_secs(30));
        assert!(limiter.check(CLIENT, "b@shop.test").is_ok());
        clock.advance(Duration::from_secs(30));
        assert!(limiter.check(CLIENT, "a@shop.test").is_ok());
    }

    #[test]
    fn a_client_is_limited_across_accounts_and_ipv6_by_its_64() {
        let limiter = LoginLimiter::with_clock(limits(2, 100), FakeRelativeClock::default());
        let host: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(limiter.check(host, "a@shop.test").is_ok());
        assert!(limiter.check(same_64, "b@shop.test").is_ok());
        assert!(limiter.check(host, "c@shop.test").is_err());
        assert!(limiter.check(other_64, "d@shop.test").is_ok());
    }

    #[test]
    fn idle_keys_are_forgotten_once_their_allowance_refills() {
        let clock = FakeRelativeClock::default();
        let limiter = LoginLimiter::with_clock(limits(1000, 10), clock.clone());
        for n in 0..50 {
            let _ = limiter.check(CLIENT, &format!("user{n}@shop.test"));
        }
        assert_eq!(limiter.tracked_keys(), 51);
        limiter.forget_idle();
        assert_eq!(limiter.tracked_keys(), 51, "recent keys are kept");
        clock.advance(Duration::from_secs(61));
        limiter.forget_idle();
        assert_eq!(limiter.tracked_keys(), 0);
    }
}
