export const images = {
};
