@0xc242b7ad8151d394;
# The CapTP membrane's interfaces. A kernel presents every object it exports
# to a Cap'n Proto peer as an Exo; its bootstrap object is a Gate.
#
# Data crossing the membrane is capdata: Endo smallcaps JSON, whose slot i is
# the i-th capability in `caps`. So a call of `increment()` carries
# args = (body = "#[]"), and passing an object x as the one argument carries
# args = (body = "#[\"$0.Alleged: x\"]", caps = [x]).

struct CapData {
  body @0 :Text;
  caps @1 :List(Exo);
}

interface Exo {
  call @0 (method :Text, args :CapData) -> (result :CapData, object :Exo);
  # Calls `method` with the arguments in `args` (a smallcaps array). A
  # rejection is returned as an exception naming the reason. When the result
  # is a single reference, `object` is that reference too, so a caller can
  # pipeline on it (Cap'n Proto pipelines through pointer fields only).
}

interface Gate {
  # A kernel's bootstrap object. It reaches nothing by itself: a peer gets an
  # object from it only with a sturdy ref's swiss number.

  restore @0 (swiss :Text) -> (object :Exo);
  # The object a sturdy ref (`vat share`) names; an exception if none.

  hello @1 (did :Text, nonce :Data) -> (did :Text, nonce :Data, signature :Data);
  # Kernel-to-kernel sessions: a kernel introduces itself with its did:key
  # and a fresh nonce; the answer is the other kernel's did:key, its own
  # nonce, and its signature over "captp-hello" ++ the caller's nonce ++ the
  # caller's did.

  prove @2 (signature :Data, received :UInt64) -> (received :UInt64);
  # Completes the handshake: the caller's signature over "captp-prove" ++
  # the answerer's nonce ++ the answerer's did. Both sides then say how many
  # session frames they received so far, and each resends the rest.

  ack @3 (received :UInt64) -> ();
  # How many session frames the caller has received and committed: the
  # answerer may forget those it kept for resending.
}
