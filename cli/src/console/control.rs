//! The control plane as the console calls it: the one client ([`Api`], which logs in
//! again when the JWT expires and keeps it between runs), blocking on the console's runtime,
//! and the names TAB completes.

use api::client::{ApiError, Login};
use api::Api;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// How long TAB completion reuses a list of names.
const NAMES_FRESH: Duration = Duration::from_secs(2);

/// Per list and field: when it was fetched, and the names.
type Names = HashMap<(String, &'static str), (Instant, Vec<String>)>;

/// The control plane, logged in.
pub struct Control {
    /// The runtime calls (and `request`) run on.
    pub rt: Arc<Runtime>,
    client: Api,
    /// Who we are (the secret changes with `set password`).
    pub login: RefCell<Login>,
    names: RefCell<Names>,
}

impl Control {
    /// Logs in, unless `cache_dir` holds a JWT of this login with time left: scripts calling
    /// `-c` in a loop do not log in (argon2, rate-limited) every time.
    pub fn login(
        rt: Arc<Runtime>,
        login: Login,
        cache_dir: Option<&Path>,
    ) -> Result<Control, ApiError> {
        let mut builder =
            Api::builder(login.urls()).login(&login.team, &login.identity, &login.secret);
        if let Some(dir) = cache_dir {
            builder = builder.token_cache(dir);
        }
        let client = builder.build()?;
        rt.block_on(client.jwt())?;
        Ok(Control {
            rt,
            client,
            login: RefCell::new(login),
            names: RefCell::new(HashMap::new()),
        })
    }

    /// After `set password`: the new secret, and the JWT the change answered with.
    pub fn changed_secret(&self, secret: String, token: String) {
        self.login.borrow_mut().secret = secret.clone();
        self.client.changed_secret(secret, token);
    }

    /// A JWT with time left (for the broker).
    pub fn jwt(&self) -> Result<String, ApiError> {
        self.rt.block_on(self.client.jwt())
    }

    /// Calls `method path` with `body`; the answer as `T` (`()` for none).
    pub fn call<B, T>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T, ApiError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.rt.block_on(self.client.request(method, path, body))
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(Method::GET, path, None::<&()>)
    }

    /// Forgets the names TAB completes, after a change.
    pub fn forget_names(&self) {
        self.names.borrow_mut().clear();
    }

    /// The names TAB completes from `list` (`/workers`, ...): `name` (the item's `field`) of
    /// each item, fetched at most every couple of seconds. Errors complete nothing.
    pub fn names<T: DeserializeOwned>(
        &self,
        list: &str,
        field: &'static str,
        name: impl Fn(T) -> String,
    ) -> Vec<String> {
        let key = (list.to_string(), field);
        if let Some((at, names)) = self.names.borrow().get(&key) {
            if at.elapsed() < NAMES_FRESH {
                return names.clone();
            }
        }
        let names: Vec<String> = match self.get::<Vec<T>>(list) {
            Ok(items) => items.into_iter().map(name).collect(),
            Err(_) => Vec::new(),
        };
        self.names
            .borrow_mut()
            .insert(key, (Instant::now(), names.clone()));
        names
    }
}
