//! Minting NATS operator-mode (decentralised JWT) credentials for development and tests.
//!
//! Produces the same shapes nsc does (JWT v2, `ed25519-nkey`): an operator JWT naming the system
//! account, account JWTs signed by the operator, user JWTs signed by their account, `.creds` files,
//! and the server configuration fragment that trusts them with a memory resolver.

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::{KeyPair, KeyPairType};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha512_256};

const JWT_HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

const CREDS_JWT_BEGIN: &str = "-----BEGIN NATS USER JWT-----";
const CREDS_JWT_END: &str = "------END NATS USER JWT------";
const CREDS_SEED_BEGIN: &str = "-----BEGIN USER NKEY SEED-----";
const CREDS_SEED_END: &str = "------END USER NKEY SEED------";

/// The claims of a NATS JWT, in the order nats-io/jwt serialises them.
#[derive(Serialize)]
struct Claims<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    jti: &'a str,
    iat: i64,
    iss: &'a str,
    name: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    nats: Option<&'a Value>,
}

/// Signs `nats` claims for `subject` with `issuer`, producing a complete JWT.
///
/// `jti` is computed as nats-io/jwt v2 (and so nsc) does: unpadded base32 of the SHA-512/256 hash
/// of the standard claims serialised without `jti`.
pub fn encode_jwt(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    nats: Value,
) -> anyhow::Result<String> {
    let iss = issuer.public_key();
    let iat = chrono::Utc::now().timestamp();
    let mut claims = Claims {
        jti: "",
        iat,
        iss: &iss,
        name,
        sub: subject,
        nats: None,
    };
    let unhashed = serde_json::to_vec(&claims)?;
    let jti = data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(&unhashed));
    claims.jti = &jti;
    claims.nats = Some(&nats);

    let header = URL_SAFE_NO_PAD.encode(JWT_HEADER);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    let signing_input = format!("{header}.{body}");
    let signature = issuer
        .sign(signing_input.as_bytes())
        .context("failed to sign JWT")?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// Mints a self-signed operator JWT that names `system_account` (an account public key).
pub fn operator_jwt(
    operator: &KeyPair,
    name: &str,
    system_account: &str,
) -> anyhow::Result<String> {
    expect_kind(operator, KeyPairType::Operator, "operator")?;
    encode_jwt(
        operator,
        &operator.public_key(),
        name,
        json!({"type": "operator", "version": 2, "system_account": system_account}),
    )
}

/// Mints an account JWT signed by the operator; `conn_limit` is the account-wide connection limit
/// (`nats.limits.conn`, -1 for unlimited).
pub fn account_jwt(
    operator: &KeyPair,
    account_public_key: &str,
    name: &str,
    conn_limit: i64,
) -> anyhow::Result<String> {
    account_jwt_with(operator, account_public_key, name, conn_limit, None)
}

/// JetStream limits of an account, as `nsc edit account --js-mem-storage M --js-disk-storage D`
/// sets them: an account JWT with them may use JetStream (streams, consumers and key-value
/// buckets unlimited in number, storage bounded); without them it may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JetStreamLimits {
    /// Bytes of memory storage (`mem_storage`; -1 unlimited).
    pub mem_storage: i64,
    /// Bytes of file storage (`disk_storage`; -1 unlimited).
    pub disk_storage: i64,
}

/// [`account_jwt`], with JetStream enabled when `jetstream` is given.
pub fn account_jwt_with(
    operator: &KeyPair,
    account_public_key: &str,
    name: &str,
    conn_limit: i64,
    jetstream: Option<JetStreamLimits>,
) -> anyhow::Result<String> {
    expect_kind(operator, KeyPairType::Operator, "account issuer")?;
    let mut limits = json!({
        "conn": conn_limit, "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": true, "leaf": -1,
    });
    if let Some(js) = jetstream {
        let l = limits.as_object_mut().expect("limits are an object");
        l.insert("mem_storage".into(), js.mem_storage.into());
        l.insert("disk_storage".into(), js.disk_storage.into());
        l.insert("streams".into(), (-1).into());
        l.insert("consumer".into(), (-1).into());
        l.insert("max_ack_pending".into(), (-1).into());
    }
    encode_jwt(
        operator,
        account_public_key,
        name,
        json!({"type": "account", "version": 2, "limits": limits}),
    )
}

/// What a user may publish and subscribe to (the user JWT's `pub.allow` and `sub.allow`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPermissions {
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

/// Mints a user JWT signed by its account; `name` becomes the JWT's `name` claim, the human user
/// name that reports show next to the user's public key.
pub fn user_jwt(account: &KeyPair, user_public_key: &str, name: &str) -> anyhow::Result<String> {
    user_jwt_with(account, user_public_key, name, None)
}

/// [`user_jwt`], limited to `permissions` when given (else it may publish and subscribe to
/// anything in its account).
pub fn user_jwt_with(
    account: &KeyPair,
    user_public_key: &str,
    name: &str,
    permissions: Option<&UserPermissions>,
) -> anyhow::Result<String> {
    expect_kind(account, KeyPairType::Account, "user issuer")?;
    let (publish, subscribe) = match permissions {
        Some(p) => (json!({"allow": p.publish}), json!({"allow": p.subscribe})),
        None => (json!({}), json!({})),
    };
    encode_jwt(
        account,
        user_public_key,
        name,
        json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1, "pub": publish, "sub": subscribe}),
    )
}

/// Renders a `.creds` file exactly as nsc writes it: the user JWT, then the user's seed.
pub fn creds_file(user_jwt: &str, user_seed: &str) -> String {
    format!(
        "{CREDS_JWT_BEGIN}\n{user_jwt}\n{CREDS_JWT_END}\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         {CREDS_SEED_BEGIN}\n{user_seed}\n{CREDS_SEED_END}\n\n\
         *************************************************************\n"
    )
}

/// Extracts `(jwt, seed)` from the text of a `.creds` file.
pub fn parse_creds(text: &str) -> anyhow::Result<(String, String)> {
    let jwt = armoured(text, CREDS_JWT_BEGIN, CREDS_JWT_END).context("no user JWT in creds")?;
    let seed = armoured(text, CREDS_SEED_BEGIN, CREDS_SEED_END).context("no user seed in creds")?;
    if !seed.starts_with("SU") {
        bail!("creds seed is not a user seed");
    }
    Ok((jwt, seed))
}

fn armoured(text: &str, begin: &str, end: &str) -> Option<String> {
    let start = text.find(begin)? + begin.len();
    let len = text[start..].find(end)?;
    let inner = text[start..start + len].trim();
    (!inner.is_empty()).then(|| inner.to_owned())
}

fn expect_kind(key: &KeyPair, kind: KeyPairType, role: &str) -> anyhow::Result<()> {
    if key.key_pair_type() != kind {
        bail!(
            "{role} key must be of type {kind:?}, got {:?}",
            key.key_pair_type()
        );
    }
    Ok(())
}

/// What to mint for one application account.
#[derive(Debug, Clone, Default)]
pub struct AccountTemplate {
    /// Account name (the JWT `name` claim, shown as `name_tag` in CONNZ).
    pub name: String,
    /// Account-wide connection limit, -1 for unlimited.
    pub conn_limit: i64,
    /// Names of the users to mint in this account.
    pub users: Vec<String>,
    /// JetStream limits; `None`: no JetStream in this account.
    pub jetstream: Option<JetStreamLimits>,
    /// What its users may publish and subscribe to; `None`: anything in the account.
    pub permissions: Option<UserPermissions>,
}

/// A minted user: its nkey and JWT.
#[derive(Debug, Clone)]
pub struct MintedUser {
    /// Human user name (the JWT `name` claim).
    pub name: String,
    /// The user's nkey pair (public key `U...`, seed `SU...`).
    pub key: KeyPair,
    /// The user JWT, signed by its account.
    pub jwt: String,
}

impl MintedUser {
    /// The user's public nkey, which CONNZ reports as `authorized_user`.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The user's nkey seed (`SU...`).
    pub fn seed(&self) -> String {
        self.key.seed().expect("minted keys always have a seed")
    }

    /// The `.creds` file text for this user.
    pub fn creds(&self) -> String {
        creds_file(&self.jwt, &self.seed())
    }
}

/// A minted account: its nkey, JWT and users.
#[derive(Debug, Clone)]
pub struct MintedAccount {
    /// Account name.
    pub name: String,
    /// The account's nkey pair (public key `A...`).
    pub key: KeyPair,
    /// The account JWT, signed by the operator.
    pub jwt: String,
    /// The account's users.
    pub users: Vec<MintedUser>,
}

impl MintedAccount {
    /// The account's public nkey, which CONNZ reports as `account`.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The user called `name`, if minted.
    pub fn user(&self, name: &str) -> Option<&MintedUser> {
        self.users.iter().find(|u| u.name == name)
    }

    fn mint(operator: &KeyPair, template: &AccountTemplate) -> anyhow::Result<Self> {
        let key = KeyPair::new_account();
        let jwt = account_jwt_with(
            operator,
            &key.public_key(),
            &template.name,
            template.conn_limit,
            template.jetstream,
        )?;
        let users = template
            .users
            .iter()
            .map(|name| {
                let user = KeyPair::new_user();
                let jwt = user_jwt_with(
                    &key,
                    &user.public_key(),
                    name,
                    template.permissions.as_ref(),
                )?;
                Ok(MintedUser {
                    name: name.clone(),
                    key: user,
                    jwt,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            name: template.name.clone(),
            key,
            jwt,
            users,
        })
    }
}

/// A complete operator-mode trust chain: operator, system account `SYS` and application accounts.
#[derive(Debug, Clone)]
pub struct OperatorSetup {
    /// The operator's nkey pair.
    pub operator: KeyPair,
    /// The operator JWT (names `system_account`).
    pub operator_jwt: String,
    /// The system account, named `SYS`.
    pub system_account: MintedAccount,
    /// The application accounts, in the order given.
    pub accounts: Vec<MintedAccount>,
}

impl OperatorSetup {
    /// Mints fresh keys and JWTs: an operator called `operator_name`, a `SYS` account (unlimited
    /// connections) with `system_users`, and one account per template.
    pub fn generate(
        operator_name: &str,
        system_users: &[&str],
        accounts: &[AccountTemplate],
    ) -> anyhow::Result<Self> {
        let operator = KeyPair::new_operator();
        let system_account = MintedAccount::mint(
            &operator,
            &AccountTemplate {
                name: "SYS".to_owned(),
                conn_limit: -1,
                users: system_users.iter().map(|u| (*u).to_owned()).collect(),
                ..AccountTemplate::default()
            },
        )?;
        let operator_jwt = operator_jwt(&operator, operator_name, &system_account.public_key())?;
        let accounts = accounts
            .iter()
            .map(|t| MintedAccount::mint(&operator, t))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            operator,
            operator_jwt,
            system_account,
            accounts,
        })
    }

    /// The account called `name` (`SYS` included).
    pub fn account(&self, name: &str) -> Option<&MintedAccount> {
        std::iter::once(&self.system_account)
            .chain(&self.accounts)
            .find(|a| a.name == name)
    }

    /// The user `user` of account `account`.
    pub fn user(&self, account: &str, user: &str) -> Option<&MintedUser> {
        self.account(account)?.user(user)
    }

    /// The nats-server configuration fragment trusting this setup: `operator`, `system_account`,
    /// `resolver: MEMORY` and `resolver_preload` with every account JWT.
    pub fn server_config(&self) -> String {
        let mut out = format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n",
            self.operator_jwt,
            self.system_account.public_key()
        );
        for account in std::iter::once(&self.system_account).chain(&self.accounts) {
            out.push_str(&format!(
                "  # {}\n  {}: {}\n",
                account.name,
                account.public_key(),
                account.jwt
            ));
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn user_jwt_is_signed_by_its_account() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = user_jwt(&account, &user.public_key(), "alice").unwrap();

        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_part(parts[0]),
            json!({"typ": "JWT", "alg": "ed25519-nkey"})
        );
        let claims = decode_part(parts[1]);
        assert_eq!(claims["iss"], account.public_key());
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["name"], "alice");
        assert_eq!(claims["nats"]["type"], "user");

        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signing_input = format!("{}.{}", parts[0], parts[1]);
        let issuer = KeyPair::from_public_key(&account.public_key()).unwrap();
        issuer.verify(signing_input.as_bytes(), &signature).unwrap();
        // A different key must not verify: the check above is not vacuous.
        let other = KeyPair::new_account();
        assert!(other.verify(signing_input.as_bytes(), &signature).is_err());
    }

    #[test]
    fn jti_is_hash_of_standard_claims_without_jti() {
        let operator = KeyPair::new_operator();
        let jwt = operator_jwt(&operator, "op", "AXXX").unwrap();
        let claims = decode_part(jwt.split('.').nth(1).unwrap());
        let unhashed = json!({
            "iat": claims["iat"], "iss": claims["iss"], "name": claims["name"], "sub": claims["sub"],
        });
        // serde_json orders object keys alphabetically, which is also the Go struct order here.
        let expected = data_encoding::BASE32_NOPAD
            .encode(&Sha512_256::digest(serde_json::to_vec(&unhashed).unwrap()));
        assert_eq!(claims["jti"], expected);
        assert_eq!(claims["iss"], claims["sub"]);
        assert_eq!(claims["nats"]["system_account"], "AXXX");
    }

    #[test]
    fn account_jwt_carries_conn_limit() {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let jwt = account_jwt(&operator, &account.public_key(), "APP", 1000).unwrap();
        let claims = decode_part(jwt.split('.').nth(1).unwrap());
        assert_eq!(claims["nats"]["limits"]["conn"], 1000);
        assert_eq!(claims["iss"], operator.public_key());
    }

    #[test]
    fn account_jwt_with_jetstream_limits_and_user_jwt_with_permissions() {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let limits = JetStreamLimits {
            mem_storage: 64 << 20,
            disk_storage: 1 << 30,
        };
        let jwt =
            account_jwt_with(&operator, &account.public_key(), "JS", -1, Some(limits)).unwrap();
        let claims = decode_part(jwt.split('.').nth(1).unwrap());
        assert_eq!(claims["nats"]["limits"]["mem_storage"], 64 << 20);
        assert_eq!(claims["nats"]["limits"]["disk_storage"], 1 << 30);
        assert_eq!(claims["nats"]["limits"]["streams"], -1);
        let plain = account_jwt(&operator, &account.public_key(), "APP", 5).unwrap();
        let claims = decode_part(plain.split('.').nth(1).unwrap());
        assert!(claims["nats"]["limits"].get("disk_storage").is_none());

        let user = KeyPair::new_user();
        let permissions = UserPermissions {
            publish: vec!["$JS.API.>".into()],
            subscribe: vec!["_INBOX.>".into()],
        };
        let jwt = user_jwt_with(&account, &user.public_key(), "u", Some(&permissions)).unwrap();
        let claims = decode_part(jwt.split('.').nth(1).unwrap());
        assert_eq!(claims["nats"]["pub"]["allow"], json!(["$JS.API.>"]));
        assert_eq!(claims["nats"]["sub"]["allow"], json!(["_INBOX.>"]));
    }

    #[test]
    fn wrong_issuer_kind_is_rejected() {
        let user = KeyPair::new_user();
        assert!(user_jwt(&user, &user.public_key(), "x").is_err());
        assert!(operator_jwt(&KeyPair::new_account(), "op", "A").is_err());
    }

    #[test]
    fn creds_round_trip_with_nsc_armour() {
        let setup = OperatorSetup::generate(
            "test",
            &["sys"],
            &[AccountTemplate {
                name: "APP".into(),
                conn_limit: -1,
                users: vec!["app".into()],
                ..AccountTemplate::default()
            }],
        )
        .unwrap();
        let user = setup.user("APP", "app").unwrap();
        let text = user.creds();
        assert!(text.starts_with("-----BEGIN NATS USER JWT-----\n"));
        assert!(text.contains("\n------END NATS USER JWT------\n"));
        assert!(text.contains("\n-----BEGIN USER NKEY SEED-----\nSU"));
        assert!(text.contains("\n------END USER NKEY SEED------\n"));
        let (jwt, seed) = parse_creds(&text).unwrap();
        assert_eq!(jwt, user.jwt);
        assert_eq!(
            KeyPair::from_seed(&seed).unwrap().public_key(),
            user.public_key()
        );
        assert!(parse_creds("nothing here").is_err());
    }

    #[test]
    fn server_config_preloads_every_account() {
        let setup = OperatorSetup::generate(
            "test",
            &["sys"],
            &[AccountTemplate {
                name: "APP".into(),
                conn_limit: 5,
                users: vec![],
                ..AccountTemplate::default()
            }],
        )
        .unwrap();
        let config = setup.server_config();
        assert!(config.contains(&format!("operator: {}\n", setup.operator_jwt)));
        assert!(config.contains(&format!(
            "system_account: {}\n",
            setup.system_account.public_key()
        )));
        assert!(config.contains("resolver: MEMORY\n"));
        for account in [&setup.system_account, &setup.accounts[0]] {
            assert!(config.contains(&format!("{}: {}", account.public_key(), account.jwt)));
        }
        let operator_claims = decode_part(setup.operator_jwt.split('.').nth(1).unwrap());
        assert_eq!(
            operator_claims["nats"]["system_account"],
            setup.system_account.public_key()
        );
    }
}
