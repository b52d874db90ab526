/**
 * Named things registered once each, listed in registration order: architectures by model_type, merge and prune
 * methods by name. Registering a key twice is a bug in moe or in an extension (InternalError).
 */
import { InternalError } from '../errors';

export class Registry<T> {
  private readonly byKey = new Map<string, T>();

  /** `what` names an item in the error ("merge method"); `keyOf` gives its key. */
  constructor(
    private readonly what: string,
    private readonly keyOf: (item: T) => string,
  ) {}

  register(item: T): this {
    const key = this.keyOf(item);
    if (this.byKey.has(key)) {
      throw new InternalError(`${this.what} ${JSON.stringify(key)} is registered twice`, {
        hint: 'give it another name',
      });
    }
    this.byKey.set(key, item);
    return this;
  }

  get(key: string): T | undefined {
    return this.byKey.get(key);
  }

  /** The keys, in registration order. */
  keys(): string[] {
    return [...this.byKey.keys()];
  }

  /** The items, in registration order. */
  values(): T[] {
    return [...this.byKey.values()];
  }
}
