//! A mint, its purses and their payments, all durable exos: the classic
//! ocap currency (ERTP in miniature). Total supply is conserved through any
//! sequence of operations and restarts, and `audit` proves it.
//!
//! - The root is the mint: `mintInto(purse, amount)` adds new supply to one of
//!   its purses; `makePurse(name)` makes (or finds) a purse; `audit()` returns
//!   `{supply, inPurses, inPayments, payments}`.
//! - A purse (facet `purse`): `getBalance()`, `withdraw(amount)` returns a new
//!   payment, `deposit(payment)` moves a payment's whole amount in (once: a
//!   payment is used up by its deposit), `getDepositFacet()`.
//! - Its deposit facet (facet `depositFacet`) has `receive(payment)` only, so
//!   it can be handed out to anyone who should be able to pay, not take.
//! - A payment: `getAmount()`. It only counts if it is this mint's own: a
//!   forged or foreign object fails the guard on `deposit`.

use serde::{Deserialize, Serialize};
use vom::{Baggage, Durable, Error, MapStore, Ref, SetStore, Value};

#[derive(Serialize, Deserialize, vom::Schema)]
struct Payment {
    amount: u64,
}

#[vom::exo]
impl Payment {
    pub fn get_amount(&self) -> u64 {
        self.amount
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Purse {
    name: String,
    balance: u64,
    /// The mint's payments not yet deposited (shared by all its purses).
    live: SetStore<Durable<Payment>>,
}

impl Purse {
    fn take(&mut self, payment: &Durable<Payment>) -> Result<u64, Error> {
        if !self.live.delete(payment) {
            return Err(Error::new("payment already used"));
        }
        let amount = payment.with_mut(|p| std::mem::take(&mut p.amount));
        self.balance = self
            .balance
            .checked_add(amount)
            .ok_or_else(|| Error::new("balance would overflow"))?;
        Ok(self.balance)
    }
}

#[vom::exo(facets(purse, depositFacet))]
impl Purse {
    #[facet(purse)]
    pub fn get_balance(&self) -> u64 {
        self.balance
    }

    #[facet(purse)]
    pub fn withdraw(&mut self, amount: u64) -> Result<Durable<Payment>, Error> {
        if amount == 0 || amount > self.balance {
            return Err(Error::new(format!(
                "cannot withdraw {amount} from a balance of {}",
                self.balance
            )));
        }
        self.balance -= amount;
        let payment = Durable::new(Payment { amount });
        self.live.add(&payment)?;
        Ok(payment)
    }

    #[facet(purse)]
    pub fn deposit(&mut self, payment: Durable<Payment>) -> Result<u64, Error> {
        self.take(&payment)
    }

    #[facet(purse)]
    pub fn get_deposit_facet(&self, this: &Durable<Purse>) -> Ref {
        this.facet("depositFacet")
    }

    #[facet(depositFacet)]
    pub fn receive(&mut self, payment: Durable<Payment>) -> Result<(), Error> {
        self.take(&payment).map(|_| ())
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Mint {
    supply: u64,
    purses: MapStore<String, Durable<Purse>>,
    live: SetStore<Durable<Payment>>,
}

#[vom::exo]
impl Mint {
    pub fn make_purse(&mut self, name: String) -> Result<Ref, Error> {
        if let Some(purse) = self.purses.get(&name) {
            return Ok(purse.reference());
        }
        let purse = Durable::new(Purse {
            name: name.clone(),
            balance: 0,
            live: self.live.clone(),
        });
        self.purses.init(&name, &purse)?;
        Ok(purse.reference())
    }

    pub fn mint_into(&mut self, purse: Durable<Purse>, amount: u64) -> Result<u64, Error> {
        self.supply = self
            .supply
            .checked_add(amount)
            .ok_or_else(|| Error::new("supply would overflow"))?;
        purse.with_mut(|p| {
            p.balance += amount;
            Ok(p.balance)
        })
    }

    pub fn audit(&self) -> Value {
        let in_purses: u64 = self.purses.values().map(|p| p.with(|p| p.balance)).sum();
        let (mut in_payments, mut payments) = (0u64, 0u64);
        for payment in self.live.keys() {
            in_payments += payment.with(|p| p.amount);
            payments += 1;
        }
        Value::record([
            ("supply", Value::from(self.supply)),
            ("inPurses", Value::from(in_purses)),
            ("inPayments", Value::from(in_payments)),
            ("payments", Value::from(payments)),
        ])
    }

    pub fn purse_names(&self) -> Vec<String> {
        self.purses.keys().collect()
    }
}

fn start(baggage: &Baggage) -> Durable<Mint> {
    vom::define::<Payment>();
    vom::define::<Purse>();
    vom::define::<Mint>();
    baggage.get_or_init("mint", || {
        Durable::new(Mint {
            supply: 0,
            purses: MapStore::new(),
            live: SetStore::new(),
        })
    })
}

vom::vat_main!(start: start);
