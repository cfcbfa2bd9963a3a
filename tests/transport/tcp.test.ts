import { tcpEngine, tcpUnsupported } from "../../lib/transport/tcp/mod.ts";
import { conformanceSuite } from "./conformance.ts";

conformanceSuite(tcpEngine, { skip: tcpUnsupported });
