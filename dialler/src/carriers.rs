//! Each organization's carrier, built from its settings (kind, domain, API base, secrets) and
//! kept a few seconds so a busy campaign does not read the settings per call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cxb_control_plane::egress::Egress;
use cxb_control_plane::secrets::SecretBox;
use cxb_control_plane::model::{CarrierKind, Settings};
use sqlx::AnyPool;

use crate::carrier::cloudonix::{Cloudonix, CloudonixConfig, DEFAULT_API_BASE};
use crate::carrier::sip::SipTrunk;
use crate::carrier::{Carrier, CarrierError};

const KEEP: Duration = Duration::from_secs(5);

/// A carrier built at a time from settings.
type Cached = (Instant, Arc<dyn Carrier>, Settings);

/// Builds and caches carriers per organization.
#[derive(Debug)]
pub struct Carriers {
    simulator: Option<Arc<dyn Carrier>>,
    egress: Egress,
    secrets: Arc<SecretBox>,
    /// For the fleet's engines (the `sip` carrier asks them to dial): our own hosts, not a
    /// tenant's, so not through the egress guard.
    engines: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Carriers {
    /// `simulator`: the process's built-in carrier simulator, used by organizations whose
    /// carrier is `simulator` (none: such organizations cannot place calls here). `egress`:
    /// the guarded client every carrier API request of a tenant goes through. `secrets`: opens
    /// the sealed secrets of stored documents (the API's key).
    pub fn new(simulator: Option<Arc<dyn Carrier>>, egress: Egress, secrets: Arc<SecretBox>) -> Carriers {
        let engines = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default();
        Carriers { simulator, egress, secrets, engines, cache: Mutex::new(HashMap::new()) }
    }

    /// Whether the egress policy lets requests for tenants reach `ip`.
    pub fn egress_allows(&self, ip: std::net::IpAddr) -> bool {
        self.egress.policy().check(ip).is_ok()
    }

    /// Opens the sealed secrets of a stored document.
    /// The secret key the organization's documents (and the call-token keys) are sealed with.
    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    pub fn open_secrets(&self, doc: &mut serde_json::Value) -> Result<(), String> {
        self.secrets.open_document(doc).map_err(|e| e.to_string())
    }

    /// The organization's carrier and settings.
    pub async fn for_org(&self, db: &AnyPool, org: &str) -> Result<(Arc<dyn Carrier>, Settings), CarrierError> {
        if let Some((at, carrier, settings)) = self.cache.lock().map_err(|_| CarrierError::Config("cache poisoned".into()))?.get(org)
            && at.elapsed() < KEEP
        {
            return Ok((carrier.clone(), settings.clone()));
        }
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM settings WHERE org_id = $1")
            .bind(org)
            .fetch_optional(db)
            .await
            .map_err(|e| CarrierError::Unavailable(format!("reading settings: {e}")))?;
        let settings: Settings = match body {
            Some(b) => {
                let mut doc: serde_json::Value = serde_json::from_str(&b).map_err(|e| CarrierError::Config(format!("stored settings: {e}")))?;
                self.open_secrets(&mut doc).map_err(|e| CarrierError::Config(format!("stored settings: {e}")))?;
                serde_json::from_value(doc).map_err(|e| CarrierError::Config(format!("stored settings: {e}")))?
            }
            None => Settings::default(),
        };
        let carrier = self.build(&settings)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(org.to_string(), (Instant::now(), carrier.clone(), settings.clone()));
        }
        Ok((carrier, settings))
    }

    fn build(&self, settings: &Settings) -> Result<Arc<dyn Carrier>, CarrierError> {
        let c = &settings.carrier;
        match c.provider {
            CarrierKind::Simulator => self.simulator.clone().ok_or_else(|| CarrierError::Config("this process runs no carrier simulator".into())),
            CarrierKind::Cloudonix => {
                let domain = c.domain.clone().ok_or_else(|| CarrierError::Config("carrier.domain is required for Cloudonix".into()))?;
                let api_key = c.secrets.get("api_key").cloned().ok_or_else(|| CarrierError::Config("carrier.secrets.api_key is required for Cloudonix".into()))?;
                let api_base = c.api_base.clone().unwrap_or_else(|| DEFAULT_API_BASE.into());
                // A name is judged when it is resolved (the client's resolver is the guard); an
                // address literal here.
                if let Err(why) = self.egress.policy().check_url(&api_base) {
                    return Err(CarrierError::Config(format!("egress_forbidden: carrier.api_base points at {why}")));
                }
                let config = CloudonixConfig {
                    api_base,
                    domain,
                    api_key,
                    webhook_token: c.secrets.get("webhook_token").cloned(),
                };
                Ok(Arc::new(Cloudonix::new(self.egress.client().clone(), config)))
            }
            CarrierKind::Sip => {
                let trunk = c.sip.clone().ok_or_else(|| CarrierError::Config("carrier.sip is required for a SIP trunk".into()))?;
                Ok(Arc::new(SipTrunk::new(self.engines.clone(), trunk, c.secrets.get("password").cloned())))
            }
        }
    }
}
